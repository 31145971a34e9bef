"""backup.schedule and drill_schedule follow crontab semantics (Sunday is 0 or 7), in UTC."""

from __future__ import annotations

import random
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from croniter import croniter

from opsagent.cron import cron_trigger, next_fire

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


def _random_field(rng: random.Random, low: int, high: int) -> str:
    """One crontab field: *, a value, a range, a list or a step, within [low, high]."""
    kind = rng.choice(["star", "value", "range", "list", "step", "range_step"])
    a, b = sorted(rng.sample(range(low, high + 1), 2))
    if kind == "star":
        return "*"
    if kind == "value":
        return str(a)
    if kind == "range":
        return f"{a}-{b}"
    if kind == "list":
        return ",".join(str(v) for v in sorted(set(rng.sample(range(low, high + 1), rng.randint(2, 4)))))
    if kind == "step":
        return f"*/{rng.randint(2, max(2, (high - low) // 2))}"
    return f"{a}-{b}/{rng.randint(1, 3)}"


def test_fire_times_agree_with_croniter_on_random_expressions() -> None:
    """For 200 random crontab expressions the schedule's next 50 fire times are exactly croniter's."""
    rng = random.Random(16)
    start = datetime(2026, 11, 23, 12, 34, 56, tzinfo=UTC)
    for _ in range(200):
        # Day-of-month is kept within 1-28 half the time so rare dates do not make the walk years long.
        dom = _random_field(rng, 1, 28) if rng.random() < 0.5 else "*"
        expression = " ".join([_random_field(rng, 0, 59), _random_field(rng, 0, 23), dom,
                               _random_field(rng, 1, 12), _random_field(rng, 0, 7)])
        trigger = cron_trigger(expression)
        reference = croniter(expression, start)
        fire = trigger.get_next_fire_time(None, start)
        for _ in range(50):
            assert fire == reference.get_next(datetime), expression
            assert fire is not None
            fire = trigger.get_next_fire_time(fire, fire)


def test_every_other_weekday_counts_from_sunday_and_ranges_from_zero_work() -> None:
    """`0 3 * * */2` fires Sun/Tue/Thu/Sat and `0 3 * * 0-2` (valid crontab) fires Sun/Mon/Tue."""
    assert sorted(next_weekdays("0 3 * * */2", count=4)) == sorted(["Sun", "Tue", "Thu", "Sat"])
    assert sorted(next_weekdays("0 3 * * 0-2", count=3)) == sorted(["Sun", "Mon", "Tue"])


@pytest.mark.parametrize("expression", ["0 0 3 * * *", "0 3 * *", "61 * * * *", "0 3 * * mon-xyz"])
def test_a_bad_expression_is_a_config_error_naming_the_key(tmp_path: Path, expression: str) -> None:
    """Six fields, four fields or an out-of-range value exit 2 with a message naming backup.schedule."""
    config = tmp_path / "opsagent.yaml"
    config.write_text(f'backup:\n  schedule: "{expression}"\n')
    proc = subprocess.run([sys.executable, "-m", "opsagent", "config", "validate", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "backup.schedule" in proc.stderr and "Traceback" not in proc.stderr
    assert "five fields" in proc.stderr


def test_a_run_mid_slot_belongs_to_the_slot_that_began_before_it() -> None:
    """The slot of a moment is the latest fire time at or before it, and the next run is strictly after it."""
    trigger = cron_trigger("0 3 * * */2")
    tuesday_noon = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    assert trigger.latest_at_or_before(tuesday_noon) == datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
    assert next_fire("0 3 * * */2", tuesday_noon) == datetime(2026, 11, 26, 3, 0, tzinfo=UTC)
    assert next_fire("0 3 * * */2", datetime(2026, 11, 26, 3, 0, tzinfo=UTC)) == datetime(
        2026, 11, 28, 3, 0, tzinfo=UTC)
