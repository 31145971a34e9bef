"""Which scheduled slot a job run belongs to (pure: ``now`` is passed in); cron parsing is :mod:`opsagent.cron`."""

from __future__ import annotations

from datetime import datetime, timedelta

from apscheduler.triggers.base import BaseTrigger


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
