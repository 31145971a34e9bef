"""Which scheduled slot a job run belongs to (pure: ``now`` is passed in); cron parsing is :mod:`opsagent.cron`."""

from __future__ import annotations

from datetime import datetime, timedelta

from opsagent.cron import CrontabTrigger


def current_slot(trigger: CrontabTrigger, now: datetime) -> datetime | None:
    """The latest fire time of ``trigger`` at or before ``now`` (None if none within a year)."""
    slot = trigger.latest_at_or_before(now)
    return slot if now - slot <= timedelta(days=370) else None


def slot_end(trigger: CrontabTrigger, slot: datetime) -> datetime:
    """When the slot that began at ``slot`` ends: the next fire time (a retry must finish before it)."""
    return trigger.next_at_or_after(slot + timedelta(microseconds=1))


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
