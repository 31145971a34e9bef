"""The runner boundary: deadline, error capture, scrubbing, one measurement in flight."""

from __future__ import annotations

import threading
import time

from structlog.testing import capture_logs

from opsagent import secrets
from opsagent.checks.base import Reading, SimpleCheck
from opsagent.runtime.runner import TargetRunner


class Blocking(SimpleCheck):
    kind = "postgres"

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.closed = threading.Event()

    def measure(self) -> Reading:
        self.release.wait(30)
        return Reading(0.5)

    def close(self) -> None:
        self.closed.set()
        self.release.set()  # closing the connection unblocks the hung call, as a socket close would


class Failing(SimpleCheck):
    kind = "redis"

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def measure(self) -> Reading:
        raise self.exc


def test_hung_measurement_is_abandoned_at_the_deadline() -> None:
    """A measurement that never returns yields a down result at the deadline and its connection is closed."""
    release = threading.Event()
    made: list[Blocking] = []

    def factory() -> Blocking:
        made.append(Blocking(release))
        return made[-1]

    runner = TargetRunner("postgres", "db", factory, deadline=0.3)
    started = time.monotonic()
    result = runner.run()
    assert time.monotonic() - started < 2
    assert not result.up and "deadline" in (result.error or "")
    assert made[0].closed.wait(5)


def test_a_still_hung_previous_run_is_not_stacked() -> None:
    """While an abandoned run is still stuck, the next run reports down at once instead of starting another."""
    release = threading.Event()

    class NeverCloses(Blocking):
        def close(self) -> None:
            self.closed.set()  # this driver cannot be interrupted

    runner = TargetRunner("postgres", "db", lambda: NeverCloses(release), deadline=0.2)
    runner.run()
    started = time.monotonic()
    second = runner.run()
    assert time.monotonic() - started < 0.2
    assert not second.up and "previous run" in (second.error or "")
    release.set()


def test_errors_are_scrubbed_and_logged_without_traceback() -> None:
    """A driver error quoting the DSN is reported with the password masked and logged as one event."""
    secrets.register(["tok-abcdef-123"])
    exc = ConnectionRefusedError("could not connect to postgresql://app:pa55w0rd@db:5432/app token=tok-abcdef-123")
    runner = TargetRunner("redis", "cache", lambda: Failing(exc), deadline=2)
    with capture_logs() as logs:
        result = runner.run()
    assert not result.up
    assert "pa55w0rd" not in (result.error or "") and "tok-abcdef-123" not in (result.error or "")
    assert "ConnectionRefusedError" in (result.error or "")
    assert [entry["event"] for entry in logs] == ["check_failed"]
    assert "exc_info" not in logs[0]


def test_a_bug_in_a_check_goes_to_the_bug_hook() -> None:
    """An unexpected exception (a bug, not a target failure) is reported to the bug hook (Sentry)."""
    seen: list[BaseException] = []
    runner = TargetRunner("redis", "cache", lambda: Failing(KeyError("used_memory")), deadline=2, on_bug=seen.append)
    with capture_logs() as logs:
        result = runner.run()
    assert not result.up and "KeyError" in (result.error or "")
    assert len(seen) == 1 and logs[0]["event"] == "check_crashed"


def test_success_carries_value_and_duration() -> None:
    """A good reading becomes an up result with its value and a duration."""
    release = threading.Event()
    release.set()
    result = TargetRunner("postgres", "db", lambda: Blocking(release), deadline=2).run()
    assert result.up and result.value == 0.5 and result.duration >= 0
