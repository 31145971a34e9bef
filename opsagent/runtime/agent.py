"""The long-running agent: scheduler, runners, result store, alerts, backups, HTTP.

Data flows one way: schedule -> runner -> result -> store -> (alert pipeline,
metrics, status). Each target is its own APScheduler job (jitter, one instance
at a time, missed runs coalesced); the runner's deadline guarantees a hung
target only ever costs its own job. Shutdown wakes every waiting job, so SIGTERM
stops the daemon well inside ECS's 30 s even with a hung check in flight.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobExecutionEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector

from opsagent import __version__
from opsagent.alerts.history import AlertEvent
from opsagent.checks import check_class
from opsagent.config import Settings, TargetBase
from opsagent.notify.stats import SinkStats
from opsagent.runtime.fleet import Fleet, agent_id, default_scope, lease_for
from opsagent.runtime.results import CheckResult, ResultStore
from opsagent.runtime.runner import TargetRunner, describe_error
from opsagent.telemetry import sentry
from opsagent.telemetry.metrics import (
    SCHEDULER_COUNTERS,
    Exposition,
    ResultsCollector,
    duration_histogram,
)
from opsagent.web.app import App
from opsagent.web.ports import AlertRow, CheckRow, Health, MetricsBody, PageSettings, TriggerResult
from opsagent.web.server import serve
from opsagent.web.trends import TrendBuffer

log = structlog.get_logger("opsagent.daemon")

HEARTBEAT_SECONDS = 5.0  # six beats inside WEDGED_AFTER_SECONDS; each beat is a scheduler job (CPU, benchmarks/)
WEDGED_AFTER_SECONDS = 30.0
STOP_BUDGET_SECONDS = 20.0
LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def build_runners(settings: Settings, names: list[str] | None = None,
                  on_bug: Callable[[BaseException], None] | None = None) -> dict[tuple[str, str], TargetRunner]:
    """One runner per enabled target, optionally only those matching NAME, KIND or KIND:NAME."""
    runners: dict[tuple[str, str], TargetRunner] = {}
    for kind, target in settings.checks.targets():
        if names and not any(n in (target.name, kind, f"{kind}:{target.name}") for n in names):
            continue
        runners[(kind, target.name)] = TargetRunner(
            kind, target.name, _factory(kind, target), target.deadline, on_bug=on_bug
        )
    return runners


def _factory(kind: str, target: TargetBase) -> Callable[[], Any]:
    def make() -> Any:
        return check_class(kind)(target)

    return make


class Agent:
    """Everything `opsagent run` holds; `start()` / `stop()` are its whole lifecycle."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.started_at = clock()
        self.store = ResultStore()
        self.registry = CollectorRegistry(auto_describe=False)
        self._durations = duration_histogram(self.registry)
        self._lateness = Histogram("opsagent_scheduler_lateness_seconds",
                                   "How late a check run was submitted against its (jittered) schedule",
                                   buckets=LATENESS_BUCKETS, registry=self.registry)
        ProcessCollector(registry=self.registry)  # process_* of the sidecar itself: RSS, CPU, fds, start time
        self.runners = build_runners(settings, on_bug=sentry.capture_exception)
        self._targets = {(k, t.name): t for k, t in settings.checks.targets()}
        self._stats: dict[str, dict[tuple[str, str], int]] = defaultdict(lambda: defaultdict(int))
        self._pending_first = set(self.runners)
        self.ready = threading.Event()
        if not self.runners:
            self.ready.set()
        self._heartbeat = time.monotonic()
        self._stop = threading.Event()
        self.stopped = threading.Event()

        from opsagent.alerts.pipeline import AlertPipeline

        self.pipeline = AlertPipeline(settings, Path(settings.agent.state_dir), context=self._context, clock=clock)
        self.store.subscribe(self.pipeline.on_result)
        self.trends = TrendBuffer()  # the status page's sparklines
        self.store.subscribe(self.trends.on_result)

        # The fleet (runtime/fleet.py): shared targets run only while this agent leads; without a fleet
        # lock configured the agent is alone and leads itself.
        self.agent_id = agent_id(settings)
        lease = lease_for(settings, self.agent_id)
        self.shared = frozenset(key for key, t in self._targets.items()
                                if lease is not None and default_scope(key[0], t) == "shared")
        self.fleet = Fleet(self.agent_id, lease, settings.agent.fleet_lease, on_change=self._on_role)
        self._detached_states: list[dict[str, Any]] | None = None  # own alert state kept while the lock is away
        self.registry.register(self.fleet)
        if self.shared:
            self.store.subscribe(self._publish_fleet_state)

        self.backup: Any = None
        b = settings.backup
        if b.enabled and (b.repository or b.rds_instances or b.elasticache_clusters):
            from opsagent.backup.service import BackupService

            self.backup = BackupService(settings, self.store, clock=clock)

        # Results render with their own line cache, outside the registry (benchmarks/NOTES.md).
        self.results_metrics = ResultsCollector(self.store, self.scheduler_stats)
        self.registry.register(self.pipeline)
        if self.backup is not None:
            self.registry.register(self.backup)
        self.exposition = Exposition(self.registry, lambda: self.store.version, results=self.results_metrics)

        workers = max(4, len(self.runners) + 4)
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=workers)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
            timezone=UTC,
        )
        self.scheduler.add_listener(self._on_job_event, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_ERROR | EVENT_JOB_SUBMITTED)
        self.http: Any = None

    # -- scheduling ----------------------------------------------------------------------------

    def _schedule(self) -> None:
        now = datetime.now(UTC)
        count = max(1, len(self.runners))
        for i, key in enumerate(self.runners):
            target = self._targets[key]
            # Spread first runs (10 ms apart, over at most the first second) so 500 targets do not start
            # in one burst while a handful are all ready within a few milliseconds.
            first = now + timedelta(seconds=min(1.0, count / 100) * i / count)
            self.scheduler.add_job(
                self.run_target,
                IntervalTrigger(seconds=target.interval, jitter=min(target.interval * 0.1, 2.0), timezone=UTC),
                args=[key],
                id=f"check:{key[0]}:{key[1]}",
                name=f"{key[0]}:{key[1]}",
                next_run_time=None if key in self.shared else first,  # shared: paused until this agent leads
            )
        self.scheduler.add_job(self._beat, IntervalTrigger(seconds=HEARTBEAT_SECONDS), id="heartbeat",
                               next_run_time=now)
        self.scheduler.add_job(self._tick, IntervalTrigger(seconds=5), id="alerts-tick", next_run_time=now + timedelta(seconds=5))
        if self.backup is not None:
            for job_id, trigger, func in self.backup.jobs():
                self.scheduler.add_job(func, trigger, id=job_id, name=job_id, misfire_grace_time=300)

    def run_target(self, key: tuple[str, str]) -> CheckResult | None:
        if key in self.shared and not self.fleet.runs_shared():
            return None  # a standby never measures a shared target (its job is paused; this closes the race)
        result = self.runners[key].run()
        if key in self.shared and not self.fleet.runs_shared():
            return None  # demoted while measuring: the new leader reports this target
        self._durations.labels(key[0]).observe(result.duration)
        try:
            self.store.record(result)
        except Exception as exc:  # noqa: BLE001 - a listener bug must not stop the schedule
            log.error("result_listener_failed", check=key[0], target=key[1], error=describe_error(exc))
            sentry.capture_exception(exc)
        if key in self._pending_first:
            self._pending_first.discard(key)
            if not self._pending_first:
                self.ready.set()
                log.info("first_round_complete", targets=len(self.runners))
        return result

    def _beat(self) -> None:
        self._heartbeat = time.monotonic()

    def _tick(self) -> None:
        try:
            self.pipeline.tick()
        except Exception as exc:  # noqa: BLE001
            log.error("alert_tick_failed", error=describe_error(exc))
            sentry.capture_exception(exc)

    def _on_job_event(self, event: Any) -> None:
        job_id = getattr(event, "job_id", "")
        if not job_id.startswith("check:"):
            if isinstance(event, JobExecutionEvent) and event.exception is not None:
                log.error("job_failed", job=job_id, error=describe_error(event.exception))
                sentry.capture_exception(event.exception)
            return
        _, kind, name = job_id.split(":", 2)
        key = (kind, name)
        if event.code == EVENT_JOB_SUBMITTED:
            self._stats["opsagent_scheduler_runs_total"][key] += 1
            times = getattr(event, "scheduled_run_times", None)
            if times:
                self._lateness.observe(max(0.0, (datetime.now(UTC) - times[-1]).total_seconds()))
        elif event.code == EVENT_JOB_MISSED:
            self._stats["opsagent_scheduler_missed_runs_total"][key] += 1
            log.warning("check_run_missed", check=kind, target=name)
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            self._stats["opsagent_scheduler_skipped_runs_total"][key] += 1
            log.warning("check_run_skipped", check=kind, target=name, reason="previous run still in progress")
        elif isinstance(event, JobExecutionEvent) and event.exception is not None:
            log.error("check_job_failed", check=kind, target=name, error=describe_error(event.exception))
            sentry.capture_exception(event.exception)

    def scheduler_stats(self) -> dict[str, dict[tuple[str, str], int]]:
        # Every series exists from the start at 0, so rate() over a quiet scheduler says 0, not nothing.
        out: dict[str, dict[tuple[str, str], int]] = {name: dict.fromkeys(self.runners, 0) for name, _ in SCHEDULER_COUNTERS}
        for name, per_key in list(self._stats.items()):
            out.setdefault(name, {}).update(per_key)
        # The runner's own counters: runs abandoned at their deadline, and runs refused because
        # the previous one still hangs (added to APScheduler's max-instances skips).
        skipped = out.setdefault("opsagent_scheduler_skipped_runs_total", {})
        timeouts = out.setdefault("opsagent_check_timeouts_total", {})
        for standby in self.standby_keys():  # a standby exports nothing for the leader's targets
            for per_key in out.values():
                per_key.pop(standby, None)
        for key, runner in self.runners.items():
            if key in self.shared and not self.fleet.runs_shared():
                continue
            if runner.skipped_total:
                skipped[key] = skipped.get(key, 0) + runner.skipped_total
            if runner.abandoned_total:
                timeouts[key] = runner.abandoned_total
        return out

    def _context(self, check: str, target: str) -> dict[str, Any]:
        runner = self.runners.get((check, target))
        return dict(runner.context()) if runner is not None else {}

    # -- the fleet -----------------------------------------------------------------------------

    def _on_role(self, role: str, previous: str | None) -> None:
        """Run the shared targets as leader or orphan; otherwise stand by: no job, no connection, no series.

        Alert state follows the checks: a new leader adopts the stored hand-over state (another agent led
        before it); an agent that merely lost sight of the lock keeps its own, to resume it as an orphan.
        """
        if not self.shared:
            return
        if role in ("leader", "orphan"):
            states: list[dict[str, Any]] | None = None
            if role == "leader" and previous in (None, "standby", "detached"):
                states = self.fleet.adopted_states()
            if states is None and previous == "detached":
                states = self._detached_states
            self._detached_states = None
            adopted = None if states is None else self.pipeline.adopt_states(self.shared, states)
            log.info("fleet_targets_taken_over", role=role, targets=len(self.shared), alert_states=adopted)
            now = datetime.now(self.scheduler.timezone)
            for i, key in enumerate(sorted(self.shared)):
                self._modify_job(key, next_run_time=now + timedelta(seconds=min(1.0, len(self.shared) / 100)
                                                                    * i / len(self.shared)))
            return
        if role == "detached" and previous != "standby":
            self._detached_states = self.pipeline.export_states(self.shared)
        elif role == "standby":
            self._detached_states = None
        for key in self.shared:
            self._modify_job(key, next_run_time=None)
            self.store.forget(*key)
            self._pending_first.discard(key)
            threading.Thread(target=self.runners[key].close, name="fleet-standby-close", daemon=True).start()
        self.pipeline.release_states(self.shared)
        if not self._pending_first and not self.ready.is_set():
            self.ready.set()
            log.info("first_round_complete", targets=len(self.runners) - len(self.shared))

    def _modify_job(self, key: tuple[str, str], next_run_time: datetime | None) -> None:
        job_id = f"check:{key[0]}:{key[1]}"
        try:
            if next_run_time is None:
                self.scheduler.pause_job(job_id)
            else:
                self.scheduler.modify_job(job_id, next_run_time=next_run_time)
        except Exception as exc:  # noqa: BLE001 - a stopping scheduler has no jobs left to move
            log.debug("fleet_job_not_moved", job=job_id, error=describe_error(exc))

    def _publish_fleet_state(self, result: CheckResult) -> None:
        if result.key in self.shared:
            self.fleet.publish(self.pipeline.export_states(self.shared))

    def standby_keys(self) -> frozenset[tuple[str, str]]:
        """The shared targets another agent checks now (all of them while this one does not lead)."""
        return frozenset() if not self.shared or self.fleet.runs_shared() else self.shared

    def standby(self, check: str, target: str) -> str | None:
        """For a target on standby: the agent id that checks it ("" while no leader is known), else None."""
        if (check, target) not in self.standby_keys() or not self.fleet.decided.is_set():
            return None  # not shared, led here, or the first election is still under way (pending)
        return self.fleet.leader_id() or ""

    # -- health --------------------------------------------------------------------------------

    def health(self) -> tuple[bool, str]:
        if self._stop.is_set():
            return False, "stopping"
        if not self.scheduler.running:
            return False, "scheduler is not running"
        age = time.monotonic() - self._heartbeat
        if age > WEDGED_AFTER_SECONDS:
            return False, f"scheduler wedged: no heartbeat for {age:.0f}s"
        return True, "ok"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self.http = serve(App(AgentWebView(self), clock=self.clock), self.settings.agent.listen_host,
                          self.settings.agent.listen_port)
        self.pipeline.start()
        self._schedule()
        self.scheduler.start()
        self.fleet.start()
        log.info("agent_started", agent=self.settings.agent.name, listen=self.http.address, targets=len(self.runners),
                 backups=self.backup is not None)

    def request_stop(self, reason: str = "requested") -> None:
        if not self._stop.is_set():
            log.info("agent_stopping", reason=reason)
            self._stop.set()

    def wait(self) -> None:
        self._stop.wait()

    def stop(self) -> None:
        """Stop everything within STOP_BUDGET_SECONDS, however stuck a target is."""
        self._stop.set()
        started = time.monotonic()
        if self.fleet.is_leader() and self.shared:
            self.fleet.publish(self.pipeline.export_states(self.shared))
        self.fleet.stop()  # released at once: a survivor takes over without waiting out the lease
        for runner in self.runners.values():
            runner.wake()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self.backup is not None:
            self.backup.stop(timeout=8.0)
        self.pipeline.stop(timeout=5.0)
        if self.http is not None:
            self.http.close()
        closers = [threading.Thread(target=r.close, daemon=True) for r in self.runners.values()]
        for t in closers:
            t.start()
        for t in closers:
            t.join(max(0.0, STOP_BUDGET_SECONDS - (time.monotonic() - started)) / max(1, len(closers)) + 0.05)
        sentry.flush(timeout=2.0)
        log.info("agent_stopped", seconds=round(time.monotonic() - started, 2))
        self.stopped.set()


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's per-thread malloc arenas: check threads come and go, and each arena they
    touch stays resident (measured: ~1.5 MiB of a monitoring-only agent's RSS, benchmarks/)."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(-8, arenas))  # -8 is M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to cap
        return False


def run_forever(settings: Settings) -> int:
    """`opsagent run`: start, wait for SIGTERM/SIGINT, stop cleanly; exit 0."""
    limit_malloc_arenas()
    agent = Agent(settings)

    def on_signal(signum: int, _frame: Any) -> None:
        agent.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent.start()
    except OSError as exc:
        log.error("agent_start_failed", error=describe_error(exc), listen=settings.agent.listen)
        agent.stop()
        return 1
    agent.wait()
    agent.stop()
    return 0


class AgentWebView:
    """The agent as the web layer sees it (:class:`opsagent.web.ports.AgentView`): read-only, typed, narrow."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        settings = agent.settings
        token = settings.agent.admin_token
        am = settings.notify.alertmanager_url
        self._page = PageSettings(agent_name=settings.agent.name, version=__version__,
                                  runbook_base_url=settings.agent.runbook_base_url,
                                  alertmanager_url=str(am) if am else None,
                                  admin_token=token.get_secret_value() if token is not None else None)

    def page_settings(self) -> PageSettings:
        return self._page

    def health(self) -> Health:
        agent = self._agent
        ok, reason = agent.health()
        return Health(healthy=ok, reason=reason, ready=agent.ready.is_set(), started_at=agent.started_at,
                      agent_id=agent.agent_id, fleet_leader=agent.fleet.is_leader(), fleet_lock=agent.fleet.mechanism,
                      fleet_role=agent.fleet.role)

    def metrics(self, accept: str, gzip_ok: bool) -> MetricsBody:
        exposition = self._agent.exposition
        openmetrics = exposition.wants_openmetrics(accept)
        return MetricsBody(exposition.body(gzip_ok, openmetrics), exposition.content_type_for(openmetrics),
                           gzipped=gzip_ok)

    def checks(self) -> list[CheckRow]:
        from opsagent.alerts.verdict import verdict

        agent = self._agent
        now = agent.clock()
        rows = []
        for kind, name in agent.runners:
            interval = agent._targets[(kind, name)].interval
            result = agent.store.get(kind, name)
            checked_by = agent.standby(kind, name)
            if checked_by is not None:  # a fleet standby: the leader checks this shared target
                rows.append(CheckRow(check=kind, target=name, interval_seconds=interval, state="standby",
                                     checked_by=checked_by))
                continue
            if result is None:
                rows.append(CheckRow(check=kind, target=name, interval_seconds=interval, state="pending"))
                continue
            v = verdict(agent.settings, result)
            alarm = agent.pipeline.alarm_state(kind, name)
            rows.append(CheckRow(
                check=kind, target=name, interval_seconds=interval, up=result.up, value=result.value,
                threshold=v.threshold, alert=alarm.get("alert") or v.alert, state=alarm.get("state") or v.state,
                breached=v.breached, last_run=result.at, duration_seconds=round(result.duration, 4),
                error=result.error, source=result.source, details=result.details,
                last_ok_at=agent.trends.last_ok(kind, name), trend=agent.trends.points(kind, name, now)))
        return rows

    def alerts(self) -> list[AlertRow]:
        rows = []
        for doc in self._agent.pipeline.alerts():
            annotations = doc.get("annotations") or {}
            hold = doc.get("silenced_by") if doc.get("silenced") else None
            rows.append(AlertRow(
                alertname=doc["alertname"], state="silenced" if hold else str(doc.get("state")),
                severity=str(doc.get("severity")),
                held_by=str(hold.get("source", "silence")) if hold else None,
                held_until=hold.get("ends_at") if hold else None,
                check=str(doc.get("check")), target=str(doc.get("target")), value=doc.get("value"),
                threshold=doc.get("threshold"), since=doc.get("since"), fingerprint=str(doc.get("fingerprint")),
                summary=str(annotations.get("summary", "")), description=str(annotations.get("description", "")),
                document=doc))
        return rows

    def backups(self) -> dict[str, Any] | None:
        backup = self._agent.backup
        return backup.status() if backup is not None else None

    def quality(self) -> dict[str, Any]:
        return self._agent.pipeline.quality.status(self._agent.clock())

    def history(self, limit: int) -> list[AlertEvent]:
        return self._agent.pipeline.history(limit)

    def delivery(self) -> list[SinkStats]:
        return self._agent.pipeline.delivery()

    def trigger_backup(self) -> TriggerResult:
        backup = self._agent.backup
        if backup is None:
            return "unconfigured"
        return "started" if backup.trigger_backup() else "busy"
