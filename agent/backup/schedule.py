"""Which scheduled slot a job run belongs to (pure: ``now`` is passed in)."""

from __future__ import annotations

from datetime import datetime, timedelta

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger


def current_slot(trigger: BaseTrigger, now: datetime) -> datetime | None:
    """The latest fire time of ``trigger`` at or before ``now`` (None if none within a year)."""
    for lookback in (timedelta(hours=2), timedelta(days=2), timedelta(days=8), timedelta(days=370)):
        start = now - lookback
        previous = None
        fire = trigger.get_next_fire_time(None, start)
        while fire is not None and fire <= now:
            previous = fire
            fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
        if previous is not None:
            return previous
    return None


SLOT_PREFIX = "slots/"
_STAMP = "%Y%m%dT%H%M%SZ"


def slot_key(job: str, slot: datetime) -> str:
    return f"{SLOT_PREFIX}{job}-{slot.strftime(_STAMP)}"


def expired_markers(names: list[str], now: datetime, keep: timedelta = timedelta(days=8)) -> list[str]:
    """Slot markers older than ``keep`` (no agent can still be deciding about those slots)."""
    out = []
    for name in names:
        stamp = name.rsplit("-", 1)[-1]
        try:
            when = datetime.strptime(stamp, _STAMP).replace(tzinfo=now.tzinfo)
        except ValueError:
            continue
        if when < now - keep:
            out.append(name)
    return out


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
