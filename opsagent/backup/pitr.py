"""RDS point-in-time recovery, watched: the RPO RDS really gives, not the pg_dump period.

RDS ships transaction logs about every five minutes and can restore any second
up to ``LatestRestorableTime``; the *lag* (now − that time) is the data a
point-in-time restore would lose now, and the *window* (latest − earliest
restorable time) is how far back one can go. With ``backup.rds_pitr_replica``
the DR region's replicated automated backups are read too
(``describe_db_instance_automated_backups`` in ``backup.replica_region``): their
``RestoreWindow.LatestTime`` gives the DR-region lag (5–30 min is normal).

Readings are plain data; the service turns them into metrics, ``/status`` rows
and the synthetic ``pitr`` check that ``PITRStale`` compares.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from opsagent import aws
from opsagent.config import Settings

ClientFactory = Callable[[str, str], Any]


def _default_client(service: str, region: str) -> Any:
    return aws.client(service, region)


def _unix(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    return None


@dataclass(frozen=True)
class PitrReading:
    target: str  # the RDS instance id
    region: str
    latest_restorable: float | None = None
    earliest_restorable: float | None = None
    lag_seconds: float | None = None
    window_seconds: float | None = None
    replica_region: str | None = None
    replica_latest: float | None = None
    replica_lag_seconds: float | None = None
    error: str | None = None  # the primary-region reading failed
    replica_error: str | None = None  # replicated automated backups could not be read / do not exist

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _describe(exc: BaseException) -> str:
    from opsagent.runtime.runner import describe_error

    return describe_error(exc)


def _window_start(client: Any, instance: str, raw: dict[str, Any], latest: float, now: float) -> float | None:
    """Earliest restorable time: the automated backup's restore window, else what retention implies."""
    try:
        backups = client.describe_db_instance_automated_backups(DBInstanceIdentifier=instance)
        for b in backups.get("DBInstanceAutomatedBackups", []):
            earliest = _unix((b.get("RestoreWindow") or {}).get("EarliestTime"))
            if earliest is not None:
                return earliest
    except Exception:  # noqa: BLE001 - optional detail (not every API/stand-in answers it); fall back below
        pass
    days = int(raw.get("BackupRetentionPeriod") or 0)
    if days <= 0:
        return None
    created = _unix(raw.get("InstanceCreateTime")) or (now - days * 86400)
    return max(created, now - days * 86400)


def read_instance(settings: Settings, instance: str, now: float,
                  clients: ClientFactory = _default_client) -> PitrReading:
    """One instance's PITR lag and window (and the DR region's, when asked); never raises."""
    b = settings.backup
    region = settings.agent.region
    reading = PitrReading(target=instance, region=region)
    try:
        client = clients("rds", region)
        raw = client.describe_db_instances(DBInstanceIdentifier=instance)["DBInstances"][0]
        latest = _unix(raw.get("LatestRestorableTime"))
        if latest is None:
            reading = PitrReading(target=instance, region=region, error=(
                "no LatestRestorableTime: automated backups are off (BackupRetentionPeriod 0) or not started yet"))
        else:
            earliest = _window_start(client, instance, raw, latest, now)
            reading = PitrReading(target=instance, region=region, latest_restorable=latest,
                                  earliest_restorable=earliest, lag_seconds=max(0.0, now - latest),
                                  window_seconds=(latest - earliest) if earliest is not None else None)
    except Exception as exc:  # noqa: BLE001 - one instance's failure is its reading, not the agent's
        reading = PitrReading(target=instance, region=region, error=_describe(exc))
    if not b.rds_pitr_replica:
        return reading
    dr = b.replica_region or region
    try:
        answer = clients("rds", dr).describe_db_instance_automated_backups(DBInstanceIdentifier=instance)
        copies = [c for c in answer.get("DBInstanceAutomatedBackups", [])
                  if _unix((c.get("RestoreWindow") or {}).get("LatestTime")) is not None]
        if not copies:
            return _with_replica(reading, dr, error=f"no replicated automated backups of {instance} in {dr}; "
                                 "start them with `aws rds start-db-instance-automated-backups-replication`")
        latest_dr = max(_unix(c["RestoreWindow"]["LatestTime"]) or 0.0 for c in copies)
        return _with_replica(reading, dr, latest=latest_dr, lag=max(0.0, now - latest_dr))
    except Exception as exc:  # noqa: BLE001
        return _with_replica(reading, dr, error=f"replicated automated backups in {dr}: {_describe(exc)}")


def _with_replica(r: PitrReading, region: str, *, latest: float | None = None, lag: float | None = None,
                  error: str | None = None) -> PitrReading:
    from dataclasses import replace

    return replace(r, replica_region=region, replica_latest=latest, replica_lag_seconds=lag, replica_error=error)


def read_all(settings: Settings, now: float | None = None, clients: ClientFactory = _default_client) -> list[PitrReading]:
    at = time.time() if now is None else now
    return [read_instance(settings, instance, at, clients) for instance in settings.backup.rds_instances]
