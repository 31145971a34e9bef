"""Grandfather-father-son retention: a pure function of the backups and now."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from opsagent.backup.retention import PERIODS, Item, keep_for_target, select_deletions

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC).timestamp()

times = st.lists(st.floats(min_value=NOW - 200 * 86400, max_value=NOW, allow_nan=False), min_size=0, max_size=60)
policies = st.fixed_dictionaries({
    "hourly": st.integers(0, 30), "daily": st.integers(0, 20), "weekly": st.integers(0, 10),
})
targets = st.sampled_from(["postgres/a", "postgres/b", "rds/c"])


def _items(ts: list[float], tgts: list[str] | None = None) -> list[Item]:
    return [Item(id=f"b{i}", target=(tgts[i] if tgts else "postgres/a"), time=t) for i, t in enumerate(ts)]


def _reference(items: list[Item], policy: dict[str, int]) -> set[str]:
    """Spelled out differently: group by period, order the periods, keep the newest of the newest N."""
    keep = {max(items, key=lambda i: (i.time, i.id)).id} if items else set()
    for rule, period in PERIODS.items():
        groups: dict[tuple[int, ...], list[Item]] = {}
        for item in items:
            groups.setdefault(period(item.time), []).append(item)
        newest_periods = sorted(groups, key=lambda p: max(i.time for i in groups[p]), reverse=True)[:policy[rule]]
        keep |= {max(groups[p], key=lambda i: (i.time, i.id)).id for p in newest_periods}
    return keep


@settings(max_examples=300, deadline=None)
@given(ts=times, policy=policies)
def test_newest_backup_is_never_deleted(ts: list[float], policy: dict[str, int]) -> None:
    """Whatever the policy (even 0/0/0), the newest complete backup of a target survives retention."""
    items = _items(ts)
    doomed = set(select_deletions(items, policy, NOW))
    if items:
        newest = max(items, key=lambda i: (i.time, i.id))
        assert newest.id not in doomed


@settings(max_examples=300, deadline=None)
@given(ts=times, policy=policies)
def test_keeps_exactly_what_the_policy_says(ts: list[float], policy: dict[str, int]) -> None:
    """The kept set is the newest backup of each of the newest N hours, days and weeks, plus the newest overall."""
    items = _items(ts)
    assert keep_for_target(items, policy, NOW) == _reference(items, policy)
    doomed = set(select_deletions(items, policy, NOW))
    assert doomed == {i.id for i in items} - _reference(items, policy)


@settings(max_examples=200, deadline=None)
@given(ts=times, tgts=st.lists(targets, min_size=60, max_size=60), policy=policies)
def test_targets_are_judged_separately(ts: list[float], tgts: list[str], policy: dict[str, int]) -> None:
    """Each target keeps its own newest backup and its own periods; one busy target never evicts another's."""
    items = _items(ts, tgts)
    doomed = set(select_deletions(items, policy, NOW))
    for target in {i.target for i in items}:
        mine = [i for i in items if i.target == target]
        assert {i.id for i in mine} - doomed == _reference(mine, policy)


@settings(max_examples=200, deadline=None)
@given(ts=times, policy=policies)
def test_applying_retention_twice_deletes_nothing_more(ts: list[float], policy: dict[str, int]) -> None:
    """Running retention again on what it kept keeps all of it (the next run does not erode the history)."""
    items = _items(ts)
    kept = [i for i in items if i.id in keep_for_target(items, policy, NOW)]
    assert select_deletions(kept, policy, NOW) == []


def test_hourly_daily_weekly_example() -> None:
    """Backups every hour for three weeks with 24/7/3 keep a day of hourlies, a week of dailies and 3 weeklies."""
    ts = [NOW - h * 3600 for h in range(21 * 24)]
    items = _items(ts)
    kept = keep_for_target(items, {"hourly": 24, "daily": 7, "weekly": 3}, NOW)
    kept_times = sorted((i.time for i in items if i.id in kept), reverse=True)
    assert kept_times[:24] == ts[:24]  # the last 24 hours, one each
    older = [datetime.fromtimestamp(t, UTC).strftime("%m-%d %H") for t in kept_times[24:]]
    # dailies: the last hour of Nov 19..23 (24th and 25th are covered by the hourlies);
    # weeklies: this ISO week and last are covered, the week before adds Sunday Nov 15.
    assert older == ["11-23 23", "11-22 23", "11-21 23", "11-20 23", "11-19 23", "11-15 23"]
    assert len(kept) == 30


def test_backups_stamped_after_now_are_kept() -> None:
    """A backup from an agent whose clock runs ahead is never deleted by one whose clock is behind."""
    items = _items([NOW + 600, NOW + 300, NOW - 10])
    assert select_deletions(items, {"hourly": 0, "daily": 0, "weekly": 0}, NOW) == ["b2"]


def test_manual_backups_are_kept_for_manual_keep_then_follow_the_policy() -> None:
    """A hand-taken backup younger than manual_keep is never selected; once older, the periods decide."""
    policy = {"hourly": 1, "daily": 0, "weekly": 0, "manual_keep": 86400.0}
    items = [Item(id="manual", target="postgres/a", time=NOW - 3600 * 5, manual=True),
             Item(id="sched", target="postgres/a", time=NOW - 3600 * 4),
             Item(id="newest", target="postgres/a", time=NOW - 60)]
    assert select_deletions(items, policy, NOW) == ["sched"]
    assert select_deletions(items, policy, NOW + 86400) == ["manual", "sched"]
