"""Cron expressions exactly as crontab(5) reads them, in UTC (``backup.schedule``, ``drill_schedule``).

croniter implements crontab(5)'s rules (Sunday is 0 or 7, ``*/2`` in the
day-of-week field counts from Sunday, day-of-month and day-of-week are ORed
when both are restricted); APScheduler's own CronTrigger does not (it counts
weekdays from Monday, so ``0 3 * * */2`` ran Sun/Mon/Wed/Fri and ``0-2`` was
rejected). :class:`CrontabTrigger` lets the APScheduler scheduler keep running
the jobs while croniter decides when.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from apscheduler.triggers.base import BaseTrigger
from croniter import croniter

FORM = "five fields 'minute hour day-of-month month day-of-week' such as '0 * * * *' (UTC)"
_TINY = timedelta(microseconds=1)


def check(expression: object) -> str:
    """The expression, normalised; ValueError saying what is wrong (six fields, a bad value)."""
    if not isinstance(expression, str):
        raise ValueError(f"{expression!r} is not a cron expression; expected {FORM}")
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"{expression!r} has {len(fields)} fields; expected {FORM} (seconds are not supported)")
    normal = " ".join(fields)
    try:
        croniter(normal, datetime(2026, 1, 1, tzinfo=UTC)).get_next(datetime)
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        raise ValueError(f"{expression!r} is not a valid cron expression ({exc}); expected {FORM}") from None
    return normal


class CrontabTrigger(BaseTrigger):  # type: ignore[misc]  # apscheduler ships no type hints
    """An APScheduler trigger whose fire times are croniter's."""

    def __init__(self, expression: str) -> None:
        self.expression = check(expression)
        self.timezone = UTC  # what APScheduler and its users read off a trigger

    def next_at_or_after(self, moment: datetime) -> datetime:
        """The first fire time >= ``moment`` (UTC)."""
        moment = moment.astimezone(UTC)
        fire: datetime = croniter(self.expression, moment - _TINY).get_next(datetime)
        while fire < moment:  # croniter works in whole minutes; a moment mid-minute is after its start
            fire = croniter(self.expression, fire).get_next(datetime)
        return fire

    def latest_at_or_before(self, moment: datetime) -> datetime:
        """The last fire time <= ``moment`` (the slot a run at ``moment`` belongs to)."""
        moment = moment.astimezone(UTC)
        fire: datetime = croniter(self.expression, moment + _TINY).get_prev(datetime)
        while fire > moment:
            fire = croniter(self.expression, fire).get_prev(datetime)
        return fire

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        start = now
        if previous_fire_time is not None and previous_fire_time + _TINY > start:
            start = previous_fire_time + _TINY
        return self.next_at_or_after(start)

    def __str__(self) -> str:
        return f"crontab[{self.expression}]"

    def __repr__(self) -> str:
        return f"<CrontabTrigger {self.expression!r} UTC>"


def cron_trigger(expression: str) -> CrontabTrigger:
    """A UTC trigger with crontab(5) semantics; ValueError for an invalid expression."""
    return CrontabTrigger(expression)


def next_fire(expression: str, now: datetime) -> datetime:
    """The next fire time strictly after ``now`` (what /status shows as next_run_at)."""
    return CrontabTrigger(expression).next_at_or_after(now + _TINY)
