"""The backup area's Prometheus gauges, built from typed rows (SPEC §6 and §9.3 names)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily, Metric

from opsagent.backup.audit import Control
from opsagent.backup.drill import DrillReport
from opsagent.backup.engine import RunReport
from opsagent.backup.freshness import Freshness
from opsagent.backup.pitr import PitrReading

_KT = ["kind", "target"]


def _freshness(rows: list[Freshness]) -> list[Metric]:
    last_ok = GaugeMetricFamily("opsagent_backup_last_success_timestamp_seconds",
                                "Completion time of the newest complete backup", labels=_KT)
    replica = GaugeMetricFamily("opsagent_replica_last_success_timestamp_seconds",
                                "Completion time of the newest backup verified in the replica region",
                                labels=[*_KT, "region"])
    rpo = GaugeMetricFamily("opsagent_rpo_seconds", "Age of the newest complete backup (data at risk); since the "
                            "agent started when none exists", labels=_KT)
    size = GaugeMetricFamily("opsagent_backup_size_bytes", "Size of the newest complete backup", labels=_KT)
    duration = GaugeMetricFamily("opsagent_backup_duration_seconds", "How long the newest backup took", labels=_KT)
    future = GaugeMetricFamily("opsagent_backup_future_manifests",
                               "Complete backups stamped after now (a fleet member's clock is ahead); not counted "
                               "for the RPO", labels=_KT)
    for t in rows:
        labels = [t.kind, t.target]
        if t.newest is not None:
            last_ok.add_metric(labels, t.newest.timestamp)
        if t.replica is not None:
            replica.add_metric([*labels, str(t.region)], t.replica.timestamp)
        rpo.add_metric(labels, t.age_for_alarm)
        if t.size_bytes is not None:
            size.add_metric(labels, t.size_bytes)
        if t.duration_seconds is not None:
            duration.add_metric(labels, t.duration_seconds)
        if t.kind == "postgres":
            future.add_metric(labels, float(len(t.future)))
    return [last_ok, replica, rpo, size, duration, future]


def _drills(last_drill: list[DrillReport]) -> list[Metric]:
    d_dur = GaugeMetricFamily("opsagent_drill_last_duration_seconds", "Duration of the last restore drill",
                              labels=["target"])
    d_ts = GaugeMetricFamily("opsagent_drill_last_success_timestamp_seconds",
                             "When the last successful restore drill finished", labels=["target"])
    d_ok = GaugeMetricFamily("opsagent_drill_last_success", "1 if the last restore drill passed within the RTO",
                             labels=["target"])
    proven = GaugeMetricFamily("opsagent_rpo_proven_seconds", "Drill end minus the newest watermark found in the "
                               "restored copy: the RPO proven from restored data", labels=["target"])
    for d in last_drill:
        d_dur.add_metric([d.target], d.duration_seconds)
        d_ok.add_metric([d.target], 0.0 if d.failed else 1.0)
        if not d.failed:
            d_ts.add_metric([d.target], d.finished)
        if d.rpo_proven_seconds is not None:
            proven.add_metric([d.target], d.rpo_proven_seconds)
    return [d_dur, d_ts, d_ok, proven]


def _pitr(readings: list[PitrReading]) -> list[Metric]:
    lag = GaugeMetricFamily("opsagent_pitr_lag_seconds", "Now minus the RDS LatestRestorableTime", labels=["target"])
    window = GaugeMetricFamily("opsagent_pitr_window_seconds", "How far back point-in-time recovery reaches",
                               labels=["target"])
    replica = GaugeMetricFamily("opsagent_pitr_replica_lag_seconds", "Now minus the newest restorable time of the "
                                "DR region's replicated automated backups", labels=["target", "region"])
    for r in readings:
        if r.lag_seconds is not None:
            lag.add_metric([r.target], r.lag_seconds)
        if r.window_seconds is not None:
            window.add_metric([r.target], r.window_seconds)
        if r.replica_lag_seconds is not None:
            replica.add_metric([r.target, str(r.replica_region)], r.replica_lag_seconds)
    return [lag, window, replica]


def _posture(controls: list[Control]) -> list[Metric]:
    compliant = GaugeMetricFamily("opsagent_posture_compliant", "1 if the backup posture control passes "
                                  "(opsagent audit)", labels=["control", "target"])
    for c in controls:
        compliant.add_metric([c.control, c.target], 1.0 if c.passed else 0.0)
    return [compliant]


def backup_metrics(rows: list[Freshness], last_run: RunReport | None, last_drill: list[DrillReport],
                   pitr: list[PitrReading], posture: list[Control]) -> Iterable[Metric]:
    run_ok = GaugeMetricFamily("opsagent_backup_last_run_success",
                               "1 if the last backup and replication run of the target succeeded", labels=_KT)
    if last_run is not None:
        for o in last_run.outcomes:
            run_ok.add_metric([o.kind, o.target], 0.0 if o.failed else 1.0)
    return [*_freshness(rows), run_ok, *_drills(last_drill), *_pitr(pitr), *_posture(posture)]
