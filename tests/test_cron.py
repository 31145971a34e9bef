"""backup.schedule and drill_schedule follow crontab semantics (Sunday is 0 or 7), in UTC."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from opsagent.cron import cron_trigger

MONDAY = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def next_weekdays(expression: str, count: int = 7) -> list[str]:
    trigger = cron_trigger(expression)
    out, fire = [], trigger.get_next_fire_time(None, MONDAY)
    while fire is not None and len(out) < count:
        out.append(fire.strftime("%a"))
        fire = trigger.get_next_fire_time(fire, fire.replace(second=1))
    return out


@pytest.mark.parametrize(("expression", "days"), [
    ("0 3 * * 0", ["Sun"]),
    ("0 3 * * 7", ["Sun"]),
    ("0 3 * * sun", ["Sun"]),
    ("0 3 * * 1-5", ["Tue", "Wed", "Thu", "Fri", "Mon"]),
    ("0 3 * * 5-7", ["Fri", "Sat", "Sun"]),
    ("0 3 * * 0,3", ["Wed", "Sun"]),
])
def test_weekday_numbers_mean_what_crontab_means(expression: str, days: list[str]) -> None:
    """Crontab weekday numbers fire on the same days cron would fire them (APScheduler counts from Monday)."""
    seen = next_weekdays(expression, count=len(days))
    assert seen == days


def test_hourly_schedule_fires_on_the_hour_in_utc() -> None:
    """The default hourly schedule fires at minute 0 of every UTC hour."""
    fire = cron_trigger("0 * * * *").get_next_fire_time(None, MONDAY.replace(minute=17))
    assert fire == datetime(2026, 11, 23, 13, 0, tzinfo=UTC)
