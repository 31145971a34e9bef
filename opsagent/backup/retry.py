"""A failed scheduled backup is tried again within its slot, with backoff, before it counts as failed.

One transient ``pg_dump`` failure ("too many clients", a failover) used to mean
no backup until the next slot, an hour later. Now the failed targets are tried
again after ``backup.retry.backoff`` (doubling, at most ``max_backoff``), up to
``attempts`` in all, and never past the start of the next slot. Each attempt is
logged; only the merged outcome of the last attempt is published, so
``BackupFailed`` fires once the slot's attempts are spent, not on the first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

import structlog

from opsagent.backup.engine import RunReport
from opsagent.config.backup_options import RetryPolicy

log = structlog.get_logger("opsagent.backup")

Attempt = Callable[[list[str] | None], RunReport]  # None: everything; else only these postgres targets


def failed_targets(report: RunReport, all_targets: list[str]) -> list[str]:
    """The postgres targets to try again: all of them when the run itself failed."""
    if report.error is not None:
        return list(all_targets)
    return [o.target for o in report.outcomes if o.kind == "postgres" and o.failed]


def merge(first: RunReport, retry: RunReport) -> RunReport:
    """``first`` with the retried targets' outcomes replaced by the retry's."""
    retried = {o.target: o for o in retry.outcomes if o.kind == "postgres"}
    outcomes = [retried.pop(o.target, o) if o.kind == "postgres" else o for o in first.outcomes]
    outcomes.extend(retried.values())
    return replace(first, finished=retry.finished, outcomes=outcomes, error=retry.error,
                   cleaned=first.cleaned + retry.cleaned, deleted=first.deleted + retry.deleted,
                   interrupted=retry.interrupted)


def run_with_retries(attempt: Attempt, targets: list[str], policy: RetryPolicy, *, slot_end: float,
                     clock: Callable[[], float], stop: threading.Event, slot: str) -> RunReport:
    """Run, then retry what failed until it succeeds, the attempts are spent, the slot ends or we stop."""
    report = attempt(None)
    number = 1
    while not report.interrupted:
        failing = failed_targets(report, targets)
        if not failing:
            break
        errors = {o.target: o.error or o.replica_error for o in report.outcomes if o.target in failing}
        if number >= policy.attempts:
            log.error("backup_attempts_spent", slot=slot, attempts=number, targets=failing, error=report.error,
                      errors=errors)
            break
        delay = policy.delay(number)
        if clock() + delay >= slot_end:
            log.error("backup_retry_abandoned", slot=slot, attempts=number, targets=failing,
                      reason="the next attempt would start after the slot ends", error=report.error, errors=errors)
            break
        log.warning("backup_attempt_failed", slot=slot, attempt=number, attempts=policy.attempts, targets=failing,
                    retry_in_seconds=delay, error=report.error, errors=errors)
        if stop.wait(delay):
            break
        number += 1
        log.info("backup_attempt_started", slot=slot, attempt=number, attempts=policy.attempts, targets=failing)
        retry = attempt(None if report.error is not None and not report.outcomes else failing)
        report = merge(report, retry) if report.outcomes else retry
    return report
