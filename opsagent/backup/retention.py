"""Grandfather-father-son retention as a pure function of the backups and ``now``.

For each rule (hourly, daily, weekly: the number of UTC hours, days and ISO
weeks to keep) walk a target's complete backups newest first and keep the
newest backup of each distinct period until that many periods are covered.
The newest backup is always kept, whatever the policy says (0/0/0 included),
and so is anything stamped after ``now`` (another agent's clock may be ahead):
retention never leaves a target without its latest restore point. A backup
taken by hand (``backup run``, ``POST /backup``: "just before the migration")
is kept for at least ``manual_keep`` seconds whatever the periods say.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class Item:
    id: str
    target: str
    time: float  # unix seconds, when the backup completed
    manual: bool = False  # taken by hand: kept for policy["manual_keep"] seconds at least


def _hour(ts: float) -> tuple[int, ...]:
    d = datetime.fromtimestamp(ts, UTC)
    return (d.year, d.month, d.day, d.hour)


def _day(ts: float) -> tuple[int, ...]:
    d = datetime.fromtimestamp(ts, UTC)
    return (d.year, d.month, d.day)


def _week(ts: float) -> tuple[int, ...]:
    year, week, _ = datetime.fromtimestamp(ts, UTC).isocalendar()
    return (year, week)


PERIODS: dict[str, Callable[[float], tuple[int, ...]]] = {"hourly": _hour, "daily": _day, "weekly": _week}


def keep_for_target(items: list[Item], policy: Mapping[str, float], now: float) -> set[str]:
    """Ids to keep among one target's backups."""
    ordered = sorted(items, key=lambda i: (i.time, i.id), reverse=True)
    if not ordered:
        return set()
    keep = {ordered[0].id}
    keep.update(i.id for i in ordered if i.time > now)
    manual_keep = policy.get("manual_keep", 0.0)
    keep.update(i.id for i in ordered if i.manual and now - i.time < manual_keep)
    for rule, period in PERIODS.items():
        wanted = int(policy.get(rule, 0))
        seen: set[tuple[int, ...]] = set()
        for item in ordered:
            if len(seen) >= wanted:
                break
            bucket = period(item.time)
            if bucket not in seen:
                seen.add(bucket)
                keep.add(item.id)
    return keep


def select_deletions(items: Iterable[Item], policy: Mapping[str, float], now: float) -> list[str]:
    """Ids to delete, per target independently; everything not named is kept."""
    by_target: dict[str, list[Item]] = {}
    for item in items:
        by_target.setdefault(item.target, []).append(item)
    doomed: list[str] = []
    for target in sorted(by_target):
        group = by_target[target]
        kept = keep_for_target(group, policy, now)
        doomed.extend(i.id for i in sorted(group, key=lambda i: i.time) if i.id not in kept)
    return doomed
