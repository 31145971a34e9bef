"""The one boundary every check runs through.

:class:`TargetRunner` owns one target's check instance and applies, for every
run: the hard deadline (a hung check is abandoned, reported down, and its
connection closed so the thread can unwind), error capture, secret scrubbing
and timing. Checks themselves never catch broadly.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from opsagent import secrets
from opsagent.checks.base import Check, CheckError, Reading
from opsagent.runtime.results import CheckResult

log = structlog.get_logger("opsagent.runner")

# Exceptions from these modules are a target's fault (down, refused, bad answer),
# anything else is a bug in the agent and also goes to Sentry.
_TARGET_ERROR_MODULES = ("psycopg", "redis", "botocore", "boto3", "urllib3", "requests", "http", "socket", "ssl", "checks",
                         "pika")
# Raised inside a driver's reply parser these mean garbage on the wire (a Redis answering HELLO with a bulk
# string makes redis-py raise AttributeError): the target's fault, not the agent's.
_PARSER_ERRORS = (ValueError, UnicodeDecodeError, AttributeError, TypeError, IndexError, KeyError)


def describe_error(exc: BaseException) -> str:
    """One scrubbed line for a human: the exception's own words, else its type."""
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    if not text:
        return name
    return secrets.scrub(f"{name}: {text}"[:500])


def is_target_error(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, TimeoutError, ConnectionError, CheckError)):
        return True
    module = type(exc).__module__ or ""
    if module.split(".")[0] in _TARGET_ERROR_MODULES:
        return True
    # A plain ValueError raised inside a driver's reply parser (garbage on the wire) is the target's fault too.
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return isinstance(exc, _PARSER_ERRORS) and where.split(".")[0] in _TARGET_ERROR_MODULES


class _Run:
    """One in-flight measurement; :meth:`finish` wakes the job waiting in :meth:`wait`.

    A bare lock, held until the run finishes, is the hand-back: ``threading.Event`` builds a
    Condition per run and per wait, which cost about a third of a no-op run (benchmarks/).
    """

    __slots__ = ("_pending", "abandoned", "error", "finished", "reading", "thread")

    def __init__(self) -> None:
        self._pending = threading.Lock()
        self._pending.acquire()
        self.finished = False
        self.reading: Reading | None = None
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        self.abandoned = False

    def finish(self) -> None:
        """The measurement ended (or shutdown gave up on it): release the waiter."""
        self.finished = True
        try:
            self._pending.release()
        except RuntimeError:  # already released (a shutdown wake raced the real finish)
            pass

    def wait(self, timeout: float) -> bool:
        """True once finished (or woken), False when ``timeout`` seconds passed first."""
        if self._pending.acquire(timeout=timeout):
            self._pending.release()
            return True
        return self.finished


class TargetRunner:
    """Runs one target's check with a deadline; at most one measurement in flight."""

    def __init__(
        self,
        kind: str,
        target: str,
        factory: Callable[[], Check],
        deadline: float,
        clock: Callable[[], float] = time.time,
        on_bug: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.kind = kind
        self.target = target
        self.deadline = deadline
        self._factory = factory
        self._clock = clock
        self._on_bug = on_bug
        self._check: Check | None = None
        self._inflight: _Run | None = None
        # One long-lived measuring thread per target, fed through its own queue: starting a
        # thread per run cost more than a pgbouncer round trip (benchmarks/). A hung run's
        # worker is abandoned with it and replaced on the next run.
        self._worker: tuple[threading.Thread, queue.SimpleQueue[_Run | None]] | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self.abandoned_total = 0
        self.skipped_total = 0

    # -- the scheduled path -----------------------------------------------------------------

    def run(self) -> CheckResult:
        """Measure once and return a result; never raises, never blocks past the deadline."""
        started = time.monotonic()
        with self._lock:
            previous = self._inflight
            if previous is not None and previous.thread is not None and not previous.finished:
                self.skipped_total += 1
                return self._down(started, "previous run still has no answer; target hangs")
            run = _Run()
            self._inflight = run
            self._submit(run)
        finished = run.wait(self.deadline)
        if not finished or (run.reading is None and run.error is None):
            self.abandoned_total += 1
            self._abandon(run)
            reason = "agent is stopping" if self._stopping else f"no answer within {self.deadline:g}s deadline"
            log.warning("check_timeout", check=self.kind, target=self.target, deadline=self.deadline)
            return self._down(started, reason)
        with self._lock:
            self._inflight = None
        if run.error is not None:
            try:
                return self._failed(started, run.error)
            finally:
                _forget_frames(run.error)
        assert run.reading is not None
        reading = run.reading
        return CheckResult(
            check=self.kind,
            target=self.target,
            up=True,
            value=reading.value,
            at=self._clock(),
            duration=time.monotonic() - started,
            details=reading.details,
            gauges=reading.gauges,
            source=reading.source,
        )

    def _submit(self, run: _Run) -> None:
        """Hand ``run`` to this target's worker thread, starting one if there is none (caller holds the lock)."""
        worker = self._worker
        if worker is None:
            jobs: queue.SimpleQueue[_Run | None] = queue.SimpleQueue()
            thread = threading.Thread(target=self._serve, args=(jobs,), name=f"check-{self.kind}-{self.target}",
                                      daemon=True)
            self._worker = worker = (thread, jobs)
            thread.start()
        run.thread = worker[0]
        worker[1].put(run)

    def _serve(self, jobs: queue.SimpleQueue[_Run | None]) -> None:
        while True:
            run = jobs.get()
            if run is None:
                return
            self._measure(run)
            if run.abandoned:
                _forget_frames(run.error)  # nobody reads this error: do not let it hold a connection
                return  # replaced while this run hung; the new worker serves the target

    def _measure(self, run: _Run) -> None:
        try:
            check = self._check
            if check is None:
                check = self._check = self._factory()
            run.reading = check.measure()
        except BaseException as exc:  # noqa: BLE001 - the one boundary that catches everything
            run.error = exc
        finally:
            run.finish()

    def _failed(self, started: float, exc: BaseException) -> CheckResult:
        error = describe_error(exc)
        if is_target_error(exc):
            log.warning("check_failed", check=self.kind, target=self.target, error=error)
        else:
            log.error("check_crashed", check=self.kind, target=self.target, error=error)
            if self._on_bug is not None:
                self._on_bug(exc)
        return self._down(started, error)

    def _down(self, started: float, error: str) -> CheckResult:
        return CheckResult(
            check=self.kind,
            target=self.target,
            up=False,
            value=None,
            at=self._clock(),
            duration=time.monotonic() - started,
            error=error,
        )

    def _abandon(self, run: _Run) -> None:
        """Give up on a hung measurement: close its connection so the thread can unwind, retire its worker."""
        with self._lock:
            check, self._check = self._check, None
            run.abandoned = True
            worker, self._worker = self._worker, None
        if worker is not None:
            worker[1].put(None)  # if the run finished just now, the worker exits instead of idling forever
        if check is not None:
            threading.Thread(target=_close_quietly, args=(check,), name="check-close", daemon=True).start()

    # -- alert context and lifecycle ------------------------------------------------------------

    def context(self) -> Mapping[str, Any]:
        """Live facts for a page, within the deadline; empty when the target cannot give them."""
        check = self._check
        fn = getattr(check, "context", None)
        if fn is None:
            return {}
        box: dict[str, Any] = {}

        def gather() -> None:
            try:
                box["value"] = fn()
            except Exception as exc:  # noqa: BLE001 - context is best effort, never blocks a page
                box["error"] = describe_error(exc)

        thread = threading.Thread(target=gather, name=f"context-{self.kind}-{self.target}", daemon=True)
        thread.start()
        thread.join(self.deadline)
        value = box.get("value")
        return secrets.scrub_any(dict(value)) if isinstance(value, Mapping) else {}

    def wake(self) -> None:
        """Release a job waiting on a hung measurement (shutdown)."""
        self._stopping = True
        run = self._inflight
        if run is not None:
            run.finish()

    def close(self) -> None:
        with self._lock:
            check, self._check = self._check, None
            worker, self._worker = self._worker, None
        if worker is not None:
            worker[1].put(None)
        if check is not None:
            _close_quietly(check)


def _forget_frames(exc: BaseException | None) -> None:
    """Drop a handled error's tracebacks (and those of its causes).

    A kept traceback keeps every frame's locals alive, among them a driver's
    half-open connection (libpq's, after a connect timeout) in a reference
    cycle that only the cyclic GC frees, whenever it happens to run: against a
    hanging target that held ten sessions per target (found by the soak).
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


def _close_quietly(check: Check) -> None:
    try:
        check.close()
    except Exception as exc:  # noqa: BLE001 - closing a broken connection may fail; nothing to do
        log.debug("check_close_failed", check=getattr(check, "kind", "?"), error=describe_error(exc))
