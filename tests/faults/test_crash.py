"""kill -9 and SIGTERM in the middle of a backup's every phase, then a restart.

The agent runs as a real process (`opsagent backup run`, `opsagent drill`,
`opsagent run`) against S3 repositories on moto behind :class:`HttpFaultProxy`;
a phase is made to last by holding its first request at the proxy (or, for
pg_dump, by a pg_dump wrapper that stalls mid-stream), and the process is
signalled exactly then. Afterwards: nothing half-written is listed or counted,
nothing complete is lost, retention never deleted the newest complete backup,
leftovers are cleaned by the next run, and the next slot runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from opsagent.backup.engine import BackupEngine
from opsagent.backup.repository import open_repository
from opsagent.backup.service import BackupService
from opsagent.config import Settings, load_config
from opsagent.runtime.results import ResultStore
from opsagent_testing.aws import MotoServer
from opsagent_testing.proxy import HttpFaultProxy, Rule
from opsagent_testing.servers import PostgresServer, free_port, pg_bin
from tests.faults.evidence import ADMIN_TOKEN, PG_PASSWORD, record
from tests.fixtures.agent import poll
from tests.fixtures.backup import SourceDb

PRIMARY, REPLICA = "crash-primary", "crash-replica"


@pytest.fixture
def proxy(aws: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpFaultProxy]:
    import boto3

    boto3.client("s3", region_name="us-east-1", endpoint_url=aws.url).create_bucket(Bucket=PRIMARY)
    boto3.client("s3", region_name="eu-west-1", endpoint_url=aws.url).create_bucket(
        Bucket=REPLICA, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    p = HttpFaultProxy(aws.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
    try:
        yield p
    finally:
        p.close()


class Stalling:
    """A pg_dump wrapper that writes 2 kB of the real dump, signals, then stalls for 30 s before the rest."""

    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "pg_dump"
        self.marker = tmp / "dump-started"
        self.pidfile = tmp / "dump.pid"
        real = pg_bin("pg_dump")
        self.path.write_text(
            "#!/bin/sh\n"
            f'if [ "$1" = "--version" ]; then exec {real} --version; fi\n'
            f"echo $$ > {self.pidfile}\n"
            f'{real} "$@" > {tmp}/dump.bin || exit $?\n'
            f"head -c 2000 {tmp}/dump.bin\n"
            f"touch {self.marker}\n"
            "sleep 30\n"
            f"tail -c +2001 {tmp}/dump.bin\n"
        )
        self.path.chmod(0o755)

    def kill_leftover(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int(self.pidfile.read_text().strip()), signal.SIGKILL)


def _config(tmp_path: Path, source: SourceDb, drill_db: str, **backup: Any) -> dict[str, Any]:
    port = source.server.port
    return {
        "agent": {"state_dir": str(tmp_path / "state"), "region": "us-east-1", "admin_token": ADMIN_TOKEN,
                  "listen": f"127.0.0.1:{free_port()}"},
        "checks": {"cpu": None, "memory": None, "postgres": [
            {"name": "main", "dsn": f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{port}/{source.dbname}",
             "interval": "30s"}]},
        "backup": {"repository": f"s3://{PRIMARY}/prod", "replica": f"s3://{REPLICA}/prod", "replica_region": "eu-west-1",
                   "postgres": ["main"], "schedule": "0 0 1 1 *", "drill_schedule": None,
                   "drill_dsn": f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{port}/{drill_db}",
                   "drill_on_target_server": True, **backup},
    }


def _write(tmp_path: Path, config: dict[str, Any]) -> tuple[Path, Settings]:
    path = tmp_path / "opsagent.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, load_config(path, env={})


def _env(proxy: HttpFaultProxy) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPSAGENT_", "AWS_"))}
    env.update({"AWS_ENDPOINT_URL": proxy.url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_DEFAULT_REGION": "us-east-1"})
    return env


def _listed(settings: Settings, replica: bool = False) -> list[str]:
    b = settings.backup
    repo = open_repository(b.replica, "eu-west-1") if replica else open_repository(b.repository, "us-east-1")
    return [m.id for m in repo.list()]


def _upload_keys(aws: MotoServer) -> list[str]:
    import boto3

    return [f"{b}/{u['Key']}" for b, r in ((PRIMARY, "us-east-1"), (REPLICA, "eu-west-1"))
            for u in boto3.client("s3", region_name=r, endpoint_url=aws.url).list_multipart_uploads(Bucket=b)
            .get("Uploads", [])]


def _uploads(aws: MotoServer) -> int:
    return len(_upload_keys(aws))


def _backup_dirs(aws: MotoServer) -> set[str]:
    """Backup ids that have any object in the primary bucket (complete or not)."""
    import boto3

    keys = boto3.client("s3", region_name="us-east-1", endpoint_url=aws.url).list_objects_v2(
        Bucket=PRIMARY, Prefix="prod/backups/").get("Contents", [])
    return {k["Key"].split("/")[2] for k in keys}


def _scratch_dbs(server: PostgresServer) -> list[str]:
    return server.psql("SELECT datname FROM pg_database WHERE datname LIKE 'opsagent_drill_%'").split()


def _signal_when(proc: subprocess.Popen[str], ready: Callable[[], bool], sig: signal.Signals, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"agent finished before the phase was reached: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"phase not reached within {timeout}s: {proc.communicate()}")
        time.sleep(0.02)
    proc.send_signal(sig)


PHASES = ("dump", "replica", "retention", "drill")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill9", "sigterm"])
@pytest.mark.parametrize("phase", PHASES)
def test_crash_in_each_phase_loses_nothing_complete_and_recovers(
        phase: str, sig: signal.Signals, proxy: HttpFaultProxy, aws: MotoServer, source_db: SourceDb,
        private_pg: PostgresServer, tmp_path: Path) -> None:
    """A backup, replication, retention or drill run killed mid-way lists nothing half-written, keeps every complete backup it did not legitimately expire, and the next run cleans up and succeeds."""
    stall = Stalling(tmp_path)
    drill_db = f"drill_admin_{private_pg.port}"
    with contextlib.suppress(subprocess.CalledProcessError):
        private_pg.psql(f"CREATE DATABASE {drill_db}")
    # manual_keep 0s: these are hand-taken runs, which retention would otherwise keep for a day.
    retention = {"hourly": 1, "daily": 0, "weekly": 0, "manual_keep": "0s"} if phase == "retention" else {"hourly": 48}
    config = _config(tmp_path, source_db, drill_db, retention=retention)
    _, settings = _write(tmp_path, config)
    engine_env = dict(os.environ)
    first = BackupEngine(settings).run()
    assert first.ok, first.to_dict()
    if phase == "retention":
        second = BackupEngine(settings).run()
        assert second.ok
    complete_before = set(_listed(settings))
    newest_before = max(complete_before)
    assert engine_env == dict(os.environ)

    if phase == "dump":
        config["backup"]["pg_dump_path"] = str(stall.path)
    path, settings = _write(tmp_path, config)
    rule: Rule | None = None
    if phase == "replica":
        rule = proxy.inject("slow", lambda r: r["method"] in ("PUT", "POST") and r["path"].startswith(f"/{REPLICA}/prod/backups/"),
                            times=1, delay=10)
    elif phase == "retention":
        rule = proxy.inject("slow", lambda r: r["method"] in ("DELETE", "POST") and r["path"].startswith(f"/{PRIMARY}/")
                            and ("delete" in r["query"] or r["method"] == "DELETE"), times=1, delay=10)
    elif phase == "drill":
        rule = proxy.inject("slow", lambda r: r["method"] == "GET" and r["path"].startswith(f"/{REPLICA}/")
                            and r["path"].endswith("data.dump"), times=1, delay=10)
    command = ["drill", "--json"] if phase == "drill" else ["backup", "run", "--json"]
    proc = subprocess.Popen([sys.executable, "-m", "opsagent", *command, "--config", str(path)], env=_env(proxy),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = stall.marker.exists if phase == "dump" else rule.hit.is_set  # type: ignore[union-attr]
        _signal_when(proc, ready, sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stall.kill_leftover()
    record("cli", out + err)
    assert proc.returncode != 0
    proxy.clear()

    # Right after the crash: only complete backups are listed; none that was complete is gone,
    # and retention never took the newest complete one.
    listed = set(_listed(settings))
    if phase == "retention":
        assert newest_before in listed or any(i > newest_before for i in listed), (newest_before, listed)
    else:
        assert complete_before <= listed, (complete_before, listed)
    for backup_id in listed:
        assert open_repository(settings.backup.repository, "us-east-1").manifest(backup_id) is not None
    if phase == "dump":
        assert _backup_dirs(aws) - listed or _uploads(aws), "the killed dump left no trace to clean: test is void"
    if phase == "drill":
        assert _scratch_dbs(private_pg), "the killed drill left no scratch database: test is void"

    # Restart: the next run cleans every leftover and succeeds; the next drill drops stale scratch databases.
    config["backup"].pop("pg_dump_path", None)
    _, settings = _write(tmp_path, config)
    report = BackupEngine(settings).run()
    assert report.ok, report.to_dict()
    assert _upload_keys(aws) == [], (report.to_dict(), [(x.method, x.path, x.fault) for x in proxy.seen][-30:])
    assert _backup_dirs(aws) == set(_listed(settings)), "half-written objects survived the next run"
    if phase == "drill":
        from opsagent.backup.drill import Drill

        reports = Drill(settings).run()
        assert reports and not any(r.failed for r in reports), [r.to_dict() for r in reports]
        assert _scratch_dbs(private_pg) == []


def test_sigterm_to_the_daemon_mid_dump_stops_cleanly_and_the_next_slot_runs(
        proxy: HttpFaultProxy, aws: MotoServer, source_db: SourceDb, private_pg: PostgresServer, tmp_path: Path) -> None:
    """`opsagent run` told to stop while pg_dump streams exits 0 within 25 s, kills pg_dump, lists nothing half-written, and the next slot runs."""
    stall = Stalling(tmp_path)
    config = _config(tmp_path, source_db, "postgres")
    config["backup"]["pg_dump_path"] = str(stall.path)
    path, settings = _write(tmp_path, config)
    proc = subprocess.Popen([sys.executable, "-m", "opsagent", "run", "--config", str(path)], env=_env(proxy),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://{settings.agent.listen}"
    try:
        poll(lambda: _get_ok(url + "/readyz"), timeout=30, interval=0.1)
        r = requests.post(url + "/backup", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5)
        assert r.status_code == 202
        _signal_when(proc, stall.marker.exists, signal.SIGTERM)
        started = time.monotonic()
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    record("log", out + err)
    assert proc.returncode == 0 and took < 25, (proc.returncode, took, err[-2000:])
    dump_pid = int(stall.pidfile.read_text())
    poll(lambda: not _alive(dump_pid), timeout=5)
    stall.kill_leftover()
    assert _listed(settings) == []
    config["backup"].pop("pg_dump_path")
    _, settings = _write(tmp_path, config)
    service = BackupService(settings, ResultStore())
    slot = datetime.now(UTC).replace(second=0, microsecond=0)
    assert service.run_slot("backup", slot) == "ran"
    assert len(_listed(settings)) == 1 and _uploads(aws) == 0


def _get_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    return False
