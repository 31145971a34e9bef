"""``opsagent audit``: the backup posture an auditor asks about, one row per control and target.

The controls follow SPEC §9.3 (and AWS Audit Manager's backup controls):

==============================  ====================================================================
control                         passes when
==============================  ====================================================================
schedule_period                 the longest gap between two scheduled backups is ≤ ``backup.rpo``
retention                       retention keeps backups for ≥ 7 days
replica                         a replica is configured and its newest verified copy is ≤ ``rpo`` old
encryption                      S3 default encryption or SSE-KMS on the primary and the replica
rds_storage_encrypted           RDS ``StorageEncrypted``
rds_snapshots_encrypted         every agent-made RDS snapshot is encrypted
rds_backup_retention            RDS ``BackupRetentionPeriod`` ≥ 7 (point-in-time recovery on)
rds_deletion_protection         RDS ``DeletionProtection``
elasticache_snapshot_retention  ElastiCache ``SnapshotRetentionLimit`` > 0
drill                           the last restore drill of the target passed within 7 days
==============================  ====================================================================

Each row is ``{control, target, passed, detail}``; ``detail`` says what was
found and what to change. An AWS answer that cannot be read fails its control
(an auditor cannot be shown it either). The daemon exports the rows as
``opsagent_posture_compliant{control,target}`` and ``BackupPostureViolation``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from opsagent.backup.drill import DrillReport
from opsagent.backup.manifest import Manifest
from opsagent.config import Settings
from opsagent.cron import cron_trigger
from opsagent.units import format_duration

ClientFactory = Callable[[str, str], Any]
WEEK = 7 * 86400.0
MIN_RDS_RETENTION_DAYS = 7


@dataclass(frozen=True)
class Control:
    control: str
    target: str
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _default_client(service: str, region: str) -> Any:
    from opsagent import aws

    return aws.client(service, region)


def _describe(exc: BaseException) -> str:
    from opsagent.runtime.runner import describe_error

    return describe_error(exc)


def longest_gap(expression: str, now: float, horizon: float = 400 * 86400.0, limit: int = 2000) -> float:
    """The longest time between two consecutive fire times of ``expression`` within ``horizon``."""
    trigger = cron_trigger(expression)
    fire = trigger.next_at_or_after(datetime.fromtimestamp(now, UTC))
    gap = 0.0
    for _ in range(limit):
        nxt = trigger.get_next_fire_time(fire, fire)
        if nxt is None:
            break
        gap = max(gap, (nxt - fire).total_seconds())
        if (nxt.timestamp() - now) > horizon:
            break
        fire = nxt
    return gap


def retention_span(settings: Settings) -> float:
    """How far back retention keeps backups (the longest of its rules)."""
    r = settings.backup.retention
    return max(r.hourly * 3600.0, r.daily * 86400.0, r.weekly * WEEK)


def _common(settings: Settings, target: str, now: float) -> list[Control]:
    b = settings.backup
    gap = longest_gap(b.schedule, now)
    span = retention_span(settings)
    return [
        Control("schedule_period", target, gap <= b.rpo,
                f"backup.schedule {b.schedule!r} leaves up to {format_duration(gap)} between backups; "
                f"the RPO is {format_duration(b.rpo)}"),
        Control("retention", target, span >= WEEK,
                f"retention {{hourly: {b.retention.hourly}, daily: {b.retention.daily}, weekly: {b.retention.weekly}}} "
                f"keeps {format_duration(span)} of backups; at least 7d is required"),
    ]


def _bucket_encrypted(url: str, region: str, kms_key: str | None, clients: ClientFactory) -> tuple[bool, str]:
    if not url.startswith("s3://"):
        return False, f"{url}: a file repository's encryption at rest cannot be verified; use s3:// with SSE"
    if kms_key:
        return True, f"{url}: objects written with SSE-KMS ({kms_key})"
    bucket = url[len("s3://"):].split("/", 1)[0]
    try:
        rules = clients("s3", region).get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        algos = [r.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm") for r in rules]
        return bool(algos and all(algos)), f"{url}: bucket default encryption {', '.join(str(a) for a in algos)}"
    except Exception as exc:  # noqa: BLE001 - no configuration answers ServerSideEncryptionConfigurationNotFoundError
        return False, f"{url}: no default encryption and no backup.kms_key_id ({_describe(exc)})"


def _logical(settings: Settings, now: float, newest_replica: dict[tuple[str, str], Manifest],
             drills: dict[str, DrillReport], clients: ClientFactory) -> list[Control]:
    b = settings.backup
    out: list[Control] = []
    if not b.postgres:
        return out
    enc_ok, enc_detail = _bucket_encrypted(b.repository or "", settings.agent.region, b.kms_key_id, clients) \
        if b.repository else (False, "no backup.repository")
    if b.replica:
        r_ok, r_detail = _bucket_encrypted(b.replica, b.replica_region or settings.agent.region,
                                           b.replica_kms_key_id, clients)
        enc_ok, enc_detail = enc_ok and r_ok, f"{enc_detail}; {r_detail}"
    for target in b.postgres:
        out += _common(settings, target, now)
        copy = newest_replica.get(("postgres", target))
        if not b.replica:
            out.append(Control("replica", target, False, "no backup.replica: no copy outside the primary region"))
        elif copy is None:
            out.append(Control("replica", target, False, f"no verified copy of {target} in {b.replica}"))
        else:
            age = now - copy.finished
            out.append(Control("replica", target, age <= b.rpo,
                               f"newest verified copy in {b.replica} is {format_duration(age)} old "
                               f"(RPO {format_duration(b.rpo)})"))
        out.append(Control("encryption", target, enc_ok, enc_detail))
        out.append(_drill(target, drills.get(target), now, configured=b.drill_dsn is not None))
    return out


def _drill(target: str, report: DrillReport | None, now: float, *, configured: bool) -> Control:
    if report is None:
        detail = "no restore drill has run" if configured else "no restore drill configured (backup.drill_dsn)"
        return Control("drill", target, False, detail)
    age = now - report.finished
    if report.failed:
        return Control("drill", target, False, f"the last drill ({format_duration(age)} ago) failed: "
                       f"{report.error or 'slower than the RTO'}")
    return Control("drill", target, age <= WEEK, f"the last drill passed {format_duration(age)} ago")


def _rds(settings: Settings, now: float, drills: dict[str, DrillReport], clients: ClientFactory) -> list[Control]:
    b = settings.backup
    out: list[Control] = []
    region = settings.agent.region
    for instance in b.rds_instances:
        out += _common(settings, instance, now)
        out.append(Control("replica", instance, bool(b.replica_region and b.replica_region != region),
                           f"snapshots copied to {b.replica_region}" if b.replica_region else
                           "no backup.replica_region: snapshots stay in the primary region"))
        try:
            client = clients("rds", region)
            raw = client.describe_db_instances(DBInstanceIdentifier=instance)["DBInstances"][0]
        except Exception as exc:  # noqa: BLE001
            error = f"cannot describe RDS instance {instance}: {_describe(exc)}"
            out += [Control(c, instance, False, error) for c in
                    ("rds_storage_encrypted", "rds_snapshots_encrypted", "rds_backup_retention", "rds_deletion_protection")]
            continue
        encrypted = bool(raw.get("StorageEncrypted"))
        out.append(Control("rds_storage_encrypted", instance, encrypted,
                           f"StorageEncrypted is {encrypted}" + ("" if encrypted else
                           "; encrypt by restoring from a snapshot copied with a KMS key")))
        out.append(_rds_snapshots(client, instance, encrypted))
        days = int(raw.get("BackupRetentionPeriod") or 0)
        out.append(Control("rds_backup_retention", instance, days >= MIN_RDS_RETENTION_DAYS,
                           f"BackupRetentionPeriod is {days} day(s); at least {MIN_RDS_RETENTION_DAYS} is required"
                           + (" (0 turns automated backups and point-in-time recovery off)" if days == 0 else "")))
        protected = bool(raw.get("DeletionProtection"))
        out.append(Control("rds_deletion_protection", instance, protected, f"DeletionProtection is {protected}"))
        if b.rds_drill:
            out.append(_drill(instance, drills.get(instance), now, configured=True))
    return out


def _rds_snapshots(client: Any, instance: str, storage_encrypted: bool) -> Control:
    try:
        snaps = client.describe_db_snapshots(DBInstanceIdentifier=instance, SnapshotType="manual")["DBSnapshots"]
    except Exception as exc:  # noqa: BLE001
        return Control("rds_snapshots_encrypted", instance, False, f"cannot list snapshots: {_describe(exc)}")
    mine = [s for s in snaps if str(s.get("DBSnapshotIdentifier", "")).startswith("opsagent-")]
    plain = [s["DBSnapshotIdentifier"] for s in mine if not s.get("Encrypted")]
    if plain:
        return Control("rds_snapshots_encrypted", instance, False, f"unencrypted snapshots: {', '.join(plain[:5])}")
    if not mine:
        return Control("rds_snapshots_encrypted", instance, storage_encrypted,
                       "no agent snapshots yet; they will be " + ("encrypted" if storage_encrypted else "unencrypted"))
    return Control("rds_snapshots_encrypted", instance, True, f"{len(mine)} agent snapshot(s), all encrypted")


def _elasticache(settings: Settings, clients: ClientFactory) -> list[Control]:
    out: list[Control] = []
    for cluster in settings.backup.elasticache_clusters:
        try:
            client = clients("elasticache", settings.agent.region)
            try:
                raw = client.describe_replication_groups(ReplicationGroupId=cluster)["ReplicationGroups"][0]
            except Exception:  # noqa: BLE001 - not a replication group: a single cache cluster
                raw = client.describe_cache_clusters(CacheClusterId=cluster)["CacheClusters"][0]
            limit = int(raw.get("SnapshotRetentionLimit") or 0)
            out.append(Control("elasticache_snapshot_retention", cluster, limit > 0,
                               f"SnapshotRetentionLimit is {limit} day(s); automatic snapshots are "
                               + ("on" if limit > 0 else "off")))
        except Exception as exc:  # noqa: BLE001
            out.append(Control("elasticache_snapshot_retention", cluster, False,
                               f"cannot describe ElastiCache {cluster}: {_describe(exc)}"))
    return out


def run_audit(settings: Settings, now: float, *, last_drill: list[DrillReport] | None = None,
              newest_replica: dict[tuple[str, str], Manifest] | None = None,
              clients: ClientFactory | None = None) -> list[Control]:
    """Every control for every configured target; never raises (an unreadable fact fails its control)."""
    factory = clients or _default_client
    drills = {d.target: d for d in last_drill or []}
    return [*_logical(settings, now, newest_replica or {}, drills, factory), *_rds(settings, now, drills, factory),
            *_elasticache(settings, factory)]


def posture_by_target(controls: list[Control]) -> dict[str, list[str]]:
    """Per target, the names of its failing controls (empty list: compliant)."""
    out: dict[str, list[str]] = {}
    for c in controls:
        out.setdefault(c.target, [])
        if not c.passed:
            out[c.target].append(f"{c.control}: {c.detail}")
    return out


def _shared_facts(settings: Settings, now: float) -> tuple[list[DrillReport], dict[tuple[str, str], Manifest]]:
    """The last drill (shared state in the primary) and the newest replica copies, as the daemon sees them."""
    import json

    from opsagent.backup import engine as eng
    from opsagent.backup.drill import LAST_DRILL
    from opsagent.backup.freshness import newest_by_target

    drills: list[DrillReport] = []
    newest: dict[tuple[str, str], Manifest] = {}
    if not settings.backup.repository:
        return drills, newest
    try:
        raw = eng.primary_repository(settings).get_state(LAST_DRILL)
        drills = [DrillReport.from_dict(d) for d in json.loads(raw)] if raw else []
    except Exception:  # noqa: BLE001 - an unreadable record fails the drill control, which says so
        pass
    try:
        replica = eng.replica_repository(settings)
        if replica is not None:
            newest, _ = newest_by_target(replica.list(), now, verified_only=True)
    except Exception:  # noqa: BLE001 - fails the replica control ("no verified copy")
        pass
    return drills, newest


def audit_command(settings: Settings, *, json_out: bool, clients: ClientFactory | None = None) -> int:
    """`opsagent audit [--json]`: exit 0 when every control passes, 1 when any fails."""
    import json
    import sys
    import time

    from opsagent import secrets
    from opsagent.textio import table

    now = time.time()
    drills, newest = _shared_facts(settings, now)
    rows = run_audit(settings, now, last_drill=drills, newest_replica=newest, clients=clients)
    if json_out:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
    elif rows:
        print(table(["CONTROL", "TARGET", "RESULT", "DETAIL"],
                    [[r.control, r.target, "pass" if r.passed else "FAIL", secrets.scrub(r.detail)] for r in rows]))
    else:
        print("nothing to audit: backup.postgres, rds_instances and elasticache_clusters are empty", file=sys.stderr)
    return 0 if rows and all(r.passed for r in rows) else 1
