"""One timed backup or restore in a process of its own, for the issue-22 figures (benchmarks/backup_figures.py).

    python -m benchmarks.backup_run SPEC_JSON

prints one JSON line: wall seconds, CPU seconds of this process and every child (pg_dump, pg_restore),
peak RSS of this process, bytes stored. A process of its own so CPU and peak RSS are this run's alone,
and so it can put itself (and the tools it starts) into a CPU-limited cgroup first (``cgroup``: a
directory whose ``cgroup.procs`` takes a pid, cgroup v1 ``cpu`` or v2), which is how the DR runbook's
0.25 and 1 vCPU figures are measured.

Kinds: ``pg_dump`` (``pg_dump -Fc [args] > file`` + fsync: the anchor), ``agent_dump`` (``pgdump.dump``
into a file repository with a method/level/jobs), ``pg_restore`` (``pg_restore`` of a file, single stream
or ``-j``), ``agent_restore`` (``pgdump.restore_backup`` of a repository backup with ``jobs``).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(spec: dict[str, Any]) -> dict[str, Any]:
    from structlog.testing import capture_logs

    from opsagent.backup import pgdump, pgtools
    from opsagent.backup.repository import open_repository

    if spec.get("cgroup"):
        Path(spec["cgroup"], "cgroup.procs").write_text(str(os.getpid()))
    kind = spec["kind"]
    out: dict[str, Any] = {"kind": kind, "idle_rss_mib": _rss_mib()}
    cpu0, t0 = _cpu(), time.monotonic()
    if kind == "pg_dump":
        with pgtools.tool_environment(spec["dsn"]) as (env, conninfo), open(spec["file"], "wb") as fh:
            subprocess.run([spec["tool"], "--format=custom", *spec.get("args", []), f"--dbname={conninfo}"],
                           stdout=fh, env=env, check=True)
            fh.flush()
            os.fsync(fh.fileno())
        out["size"] = os.path.getsize(spec["file"])
    elif kind == "agent_dump":
        repo = open_repository(spec["repository"])
        with capture_logs() as logs:
            manifest = pgdump.dump(spec["dsn"], spec.get("target", "bench"), repo, compression=spec["method"],
                                   level=spec.get("level"), jobs=spec.get("jobs", 1))
        out.update(size=manifest.size, backup_id=manifest.id, compression=manifest.compression,
                   staging_peak_bytes=next((e.get("staging_peak_bytes") for e in logs
                                            if e.get("event") == "backup_directory_dumped"), None))
    elif kind == "pg_restore":
        with pgtools.tool_environment(spec["dsn"]) as (env, conninfo):
            subprocess.run([spec["tool"], "--no-owner", "--exit-on-error", *spec.get("args", []),
                            f"--dbname={conninfo}", spec["file"]], env=env, check=True)
    elif kind == "agent_restore":
        repo = open_repository(spec["repository"])
        manifest = repo.manifest(spec["backup_id"])
        assert manifest is not None, spec["backup_id"]
        result = pgdump.restore_backup(repo, manifest, spec["dsn"], jobs=spec.get("jobs", 1))
        if result.pg_restore_error:
            raise RuntimeError(result.pg_restore_error)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    out.update(wall=time.monotonic() - t0, cpu=_cpu() - cpu0, peak_rss_mib=_peak_mib())
    return out


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
