"""The monthly point-in-time restore drill: prove PITR works, not just that it is configured.

In the style of the RDS snapshot drill (:mod:`opsagent.backup.rds_drill`):
``restore_db_instance_to_point_in_time`` (latest restorable time) of the first
``backup.rds_instances`` entry into a scratch instance ``opsagent-drill-pitr-<ts>``
tagged ``opsagent:drill=true``, wait for it (at most ``backup.rto``), check it
(available, an endpoint, the source's engine), validate it with SQL when
``backup.pitr_drill_dsn`` is set (user, password and database of the source; its
host and port are replaced by the restored instance's endpoint; it runs
``SELECT 1``), and always delete the scratch instance. Leftovers of a
crashed drill carry the prefix and the tag and are removed by the next drill.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog

from opsagent.backup.rds_drill import (
    DRILL_PREFIX,
    DRILL_TAG,
    DrillCheckError,
    DrillOutcome,
    _delete,
    _wait,
    remove_leftovers,
)
from opsagent.backup.snapshots import MANAGED_TAG, TARGET_TAG, ClientFactory, _default_client, describe, slot_utc
from opsagent.config import Settings
from opsagent.units import format_duration

log = structlog.get_logger("opsagent.rds_drill")

PITR_PREFIX = f"{DRILL_PREFIX}pitr-"


def pitr_instance_id(now: datetime) -> str:
    return f"{PITR_PREFIX}{slot_utc(now).strftime('%Y%m%d%H%M%S')}"


def _validate_sql(credentials_dsn: str, endpoint: dict[str, Any]) -> None:
    from psycopg.conninfo import make_conninfo

    from opsagent.backup import pgtools

    dsn = make_conninfo(credentials_dsn, host=str(endpoint.get("Address")), port=str(endpoint.get("Port")))
    conn = pgtools.connect(dsn)
    try:
        row = conn.execute("SELECT 1").fetchone()
        if not row or row[0] != 1:
            raise DrillCheckError(str(endpoint.get("Address")), ["SELECT 1 did not answer 1"])
    finally:
        conn.close()


def run_pitr_drill(settings: Settings, now: datetime, *, clock: Callable[[], float] = time.time,
                   sleep: Callable[[float], None] = time.sleep, poll_interval: float = 15.0,
                   client_factory: ClientFactory = _default_client) -> DrillOutcome:
    """Restore the first RDS instance to its latest restorable time, check it, delete it; never raises."""
    b = settings.backup
    region = settings.agent.region
    source = b.rds_instances[0] if b.rds_instances else "(none)"
    started = clock()
    if not b.rds_instances:
        return DrillOutcome(source, False, "backup.rds_instances is empty; nothing to drill", 0.0, started, started)
    instance = pitr_instance_id(now)
    error: str | None = None
    passed = False
    finished = started
    try:
        client = client_factory("rds", region)
    except Exception as exc:  # noqa: BLE001
        return DrillOutcome(source, False, f"cannot make an RDS client for {region}: {describe(exc)}", 0.0,
                            started, clock())
    try:
        remove_leftovers(client, region)
    except Exception as exc:  # noqa: BLE001 - a leftover we cannot remove must not stop the drill
        log.warning("pitr_drill_leftovers_failed", region=region, error=describe(exc))
    log.info("pitr_drill_started", target=source, instance=instance, region=region)
    try:
        raw = client.describe_db_instances(DBInstanceIdentifier=source)["DBInstances"][0]
        client.restore_db_instance_to_point_in_time(
            SourceDBInstanceIdentifier=source, TargetDBInstanceIdentifier=instance, UseLatestRestorableTime=True,
            MultiAZ=False, PubliclyAccessible=False, DeletionProtection=False, AutoMinorVersionUpgrade=False,
            Tags=[{"Key": DRILL_TAG, "Value": "true"}, {"Key": MANAGED_TAG, "Value": "true"},
                  {"Key": TARGET_TAG, "Value": source}])
        restored = _wait(client, instance, clock, sleep, poll_interval, float(b.rto))
        problems = []
        endpoint = restored.get("Endpoint") or {}
        if not endpoint.get("Address") or not endpoint.get("Port"):
            problems.append("it has no endpoint address/port")
        if restored.get("Engine") != raw.get("Engine"):
            problems.append(f"engine is {restored.get('Engine')!r}, the source's is {raw.get('Engine')!r}")
        if problems:
            raise DrillCheckError(instance, problems)
        if b.pitr_drill_dsn is not None:
            _validate_sql(b.pitr_drill_dsn.get_secret_value(), endpoint)
        finished = clock()
        if finished - started > b.rto:
            error = (f"the point-in-time restore took {format_duration(finished - started)}, longer than "
                     f"backup.rto ({format_duration(b.rto)})")
        else:
            passed = True
    except Exception as exc:  # noqa: BLE001 - the drill's verdict, not a crash
        finished = clock()
        error = describe(exc)
    finally:
        try:
            if _delete(client, instance):
                log.info("pitr_drill_instance_deleted", instance=instance, region=region)
        except Exception as exc:  # noqa: BLE001
            note = f"scratch instance {instance} was not deleted ({describe(exc)}); the next drill removes it"
            error = f"{error}; {note}" if error else note
    (log.info if passed else log.warning)("pitr_drill_finished", target=source, passed=passed, error=error,
                                          duration_seconds=finished - started)
    return DrillOutcome(source, passed, error, finished - started, started, finished)
