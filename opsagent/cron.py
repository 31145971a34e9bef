"""Cron expressions as crontab(5) reads them, in UTC (``backup.schedule``, ``drill_schedule``)."""

from __future__ import annotations

from apscheduler.triggers.cron import CronTrigger

_DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _crontab_dow(field: str) -> str:
    """Rewrite crontab day-of-week numbers (0 and 7 = Sunday) as names.

    APScheduler 3 numbers weekdays from Monday = 0, so ``from_crontab("0 3 * * 0")``
    would run on Mondays; names mean the same thing to both.
    """

    def one(token: str) -> str:
        return _DOW_NAMES[int(token)] if token.isdigit() and int(token) <= 7 else token

    parts = []
    for item in field.split(","):
        base, slash, step = item.partition("/")
        if "-" in base:
            lo, _, hi = base.partition("-")
            if not slash and lo.isdigit() and hi == "7" and int(lo) < 7:
                base = f"{one(lo)}-sat,sun"  # "5-7" is Fri-Sun: "fri-sun" would wrap the wrong way
            else:
                base = f"{one(lo)}-{one(hi)}"
        else:
            base = one(base)
        parts.append(base + (slash + step if slash else ""))
    return ",".join(parts)


def cron_trigger(expression: str) -> CronTrigger:
    """A UTC CronTrigger with standard crontab semantics (including Sunday = 0 or 7)."""
    fields = expression.split()
    if len(fields) == 5:
        fields[4] = _crontab_dow(fields[4])
    return CronTrigger.from_crontab(" ".join(fields), timezone="UTC")
