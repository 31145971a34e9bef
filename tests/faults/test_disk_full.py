"""A full disk under the file repository, the replica or the alert outbox.

Each test mounts its own small tmpfs (root is required; a failed mount fails
the test loudly), fills it, and checks: a clear error naming the problem, an
alert, no corrupt or half-written backup listed, and recovery once space
returns.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from opsagent.backup.repository import open_repository
from opsagent_testing.alertmanager import Receiver
from opsagent_testing.servers import closed_port
from tests.faults.evidence import ADMIN_TOKEN, PG_PASSWORD, SLACK_PATH, record, records
from tests.fixtures.agent import RunningAgent, poll
from tests.fixtures.backup import SourceDb


class SmallDisk:
    """A tmpfs of ``size`` mounted at ``path``; :meth:`fill` leaves ``free`` bytes, :meth:`drain` gives it back."""

    def __init__(self, path: Path, size: str = "4m") -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"cannot mount a tmpfs at {path} (root needed): {proc.stderr.strip()}")
        self.filler = path / ".filler"

    def fill(self, free: int = 0) -> None:
        with open(self.filler, "ab") as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError:
                pass
        if free:
            size = self.filler.stat().st_size
            os.truncate(self.filler, max(0, size - free))

    def drain(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def disks(tmp_path: Path) -> Iterator[Callable[[str], SmallDisk]]:
    made: list[SmallDisk] = []

    def make(name: str) -> SmallDisk:
        disk = SmallDisk(tmp_path / name)
        made.append(disk)
        return disk

    yield make
    for disk in made:
        disk.unmount()


def _config(tmp_path: Path, source: SourceDb, primary: Path, replica: Path) -> dict[str, Any]:
    dsn = f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{source.server.port}/{source.dbname}"
    return {
        "agent": {"admin_token": ADMIN_TOKEN},
        "checks": {"postgres": [{"name": "main", "dsn": dsn, "interval": "30s"}]},
        "backup": {"repository": f"file://{primary}", "replica": f"file://{replica}", "postgres": ["main"],
                   "schedule": "0 0 1 1 *"},
    }


def _trigger(running: RunningAgent) -> None:
    def post() -> bool:
        r = requests.post(running.url + "/backup", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5)
        return r.status_code == 202

    poll(post, timeout=30, interval=0.2)


def _alert(running: RunningAgent, name: str) -> dict[str, Any] | None:
    doc = running.status()
    record("status", json.dumps(doc))
    return next((a for a in doc["alerts"] if a["alertname"] == name and a["state"] == "firing"), None)


def _manifests_parse(root: Path) -> list[str]:
    repo = open_repository(f"file://{root}")
    ids = [m.id for m in repo.list()]
    for path in (root / "backups").glob("*/manifest.json") if (root / "backups").is_dir() else []:
        json.loads(path.read_text())  # never a torn manifest
    return ids


@pytest.mark.parametrize("full", ["primary", "replica"])
def test_full_backup_disk_fails_clearly_pages_and_recovers(
        full: str, disks: Callable[[str], SmallDisk], source_db: SourceDb, tmp_path: Path,
        start_agent: Callable[..., RunningAgent]) -> None:
    """A full primary or replica file system fails the run with 'No space left on device', fires BackupFailed, lists nothing half-written, and the next run after space returns succeeds and replicates."""
    primary, replica = disks("primary"), disks("replica")
    running = start_agent(_config(tmp_path, source_db, primary.path, replica.path))
    (primary if full == "primary" else replica).fill(free=8192)
    _trigger(running)
    alert = poll(lambda: _alert(running, "BackupFailed"), timeout=60, interval=0.3)
    text = json.dumps(alert)
    record("alert", text)
    assert "No space left on device" in text, text
    assert running.get("/healthz").status_code == 200
    if full == "primary":
        assert _manifests_parse(primary.path) == []
        assert not list((primary.path / "backups").glob("*/data.dump")) if (primary.path / "backups").exists() else True
    else:
        assert len(_manifests_parse(primary.path)) == 1  # the primary backup itself is complete and kept
        assert _manifests_parse(replica.path) == []
    (primary if full == "primary" else replica).drain()
    _trigger(running)
    poll(lambda: len(_manifests_parse(replica.path)) >= 1, timeout=60, interval=0.3)
    poll(lambda: _alert(running, "BackupFailed") is None, timeout=60, interval=0.5)
    assert _manifests_parse(primary.path) and _manifests_parse(replica.path)


def test_full_outbox_disk_loses_no_alert_once_space_returns(
        disks: Callable[[str], SmallDisk], tmp_path: Path, start_agent: Callable[..., RunningAgent]) -> None:
    """With the state/outbox file system full, a TargetDown page that cannot be queued is logged as an error and delivered once space returns; the daemon keeps measuring."""
    state = disks("state")
    receiver = Receiver()
    try:
        state.fill()
        running = start_agent({
            "agent": {"state_dir": str(state.path)},
            "checks": {"redis": [{"name": "cache", "url": f"redis://:{PG_PASSWORD}@127.0.0.1:{closed_port()}/0",
                                  "interval": "1s", "timeout": "1s"}]},
            "alerts": {"TargetDown": {"for": "0s"}},
            "notify": {"slack_webhook_url": receiver.url + SLACK_PATH, "timeout": "2s"},
        })
        poll(lambda: _alert(running, "TargetDown"), timeout=20)
        cpu_before = (running.check_row("cpu", "task") or {}).get("last_run")
        poll(lambda: (running.check_row("cpu", "task") or {}).get("last_run") != cpu_before, timeout=5)
        assert receiver.requests == []
        logged = [text for source, text in records() if source == "log" and "alert_outbox_write_failed" in text]
        assert logged and "No space left on device" in logged[-1], "no clear error logged for the full outbox"
        state.drain()
        bodies = receiver.wait_for(1, timeout=30)
        record("alert", json.dumps(bodies))
        assert "FIRING" in bodies[0]["text"] and "TargetDown" in bodies[0]["text"]
        assert len([b for b in bodies if "FIRING" in b["text"]]) == 1
        assert running.get("/healthz").status_code == 200
    finally:
        receiver.close()

