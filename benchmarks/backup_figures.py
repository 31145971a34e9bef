"""The backup and restore figures of issue 22, side by side with pg_dump/pg_restore in the same run.

- ``backup_codec``: the agent's default backup (``pg_dump -Fc -Z0`` + zstd on the stream) against
  ``pg_dump -Fc > file`` (its built-in gzip 6): wall time, stored size, CPU-seconds per GB (agent +
  pg_dump against pg_dump), alternating runs; one run of every other method and of ``backup.jobs: 2``
  for information; on a 16+ pg_dump also ``pg_dump --compress=zstd`` against the agent's zstd.
- ``restore_jobs``: restore of the ``jobs: 2`` backup with ``pg_restore -j 2`` from the staged directory
  against ``pg_restore`` of the ``pg_dump -Fc`` file in one stream.
- ``dr_throughput``: GB/hour of dump and restore with the sidecar limited to 0.25 and 1 vCPU (a CPU
  cgroup when this machine lets the benchmark make one, else derived from the measured CPU-seconds per
  GB: the sidecar's share only limits its own processes, pg_dump/pg_restore and the agent). Writes the
  table of ``opsagent/runbooks/DisasterRecovery.md`` between its markers.
- ``footprint``: RSS each optional library costs when imported, and which of them an agent loads for a
  Redis-only, a monitoring-only and a backup config.

Every run is a process of its own (``benchmarks/backup_run.py``) so its CPU and peak RSS are its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from benchmarks import harness as h
from benchmarks.report import Row
from opsagent_testing.servers import PostgresServer, pg_bin

ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = ROOT / "opsagent" / "runbooks" / "DisasterRecovery.md"
TABLE_START = "<!-- bench:dr-throughput:start -->"
TABLE_END = "<!-- bench:dr-throughput:end -->"
DB = "benchcodec"


class _Mode(Protocol):
    name: str
    backup_mb: int
    backup_repeats: int


class _Report(Protocol):
    def add(self, row: Row) -> None: ...


class Ctx(Protocol):
    """What these figures use of benchmarks.figures.Ctx."""

    mode: _Mode
    report: _Report
    work: Path
    pg: PostgresServer


def _run(spec: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.backup_run", json.dumps(spec)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['kind']} failed: {proc.stderr[-1500:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def make_database(pg: PostgresServer, mb: int) -> int:
    """A database like the issue's measurement: pgbench tables plus mixed text, numbers and timestamps."""
    pg.psql(f"DROP DATABASE IF EXISTS {DB}")
    pg.psql(f"CREATE DATABASE {DB}")
    scale = max(1, int(mb * 0.45 / 15))  # pgbench: ~15 MB per scale unit
    subprocess.run([pg_bin("pgbench"), "-i", "-q", "-s", str(scale), "-h", "127.0.0.1", "-p", str(pg.port),
                    "-U", "postgres", DB], check=True, capture_output=True)
    rows = int(mb * 0.55 * 1024 * 1024 / 160)
    pg.psql("CREATE TABLE events (id bigint PRIMARY KEY, account int, kind text, amount numeric(12,2), "
            "at timestamptz, note text);"
            f"INSERT INTO events SELECT g, (g * 7919::bigint) % 50000, (ARRAY['login','order','refund','view'])[1 + g % 4], "
            f"(g % 100000) / 100.0, timestamptz '2026-01-01' + g * interval '17 s', "
            f"'customer ' || (g % 9973) || ' ' || md5(g::text) || ' ' || repeat(chr(97 + g % 26), g % 30) "
            f"FROM generate_series(1, {rows}) g;", dbname=DB)
    pg.psql("VACUUM ANALYZE", dbname=DB)
    return int(pg.psql(f"SELECT pg_database_size('{DB}')"))


def _fresh(pg: PostgresServer, name: str) -> str:
    pg.psql(f"DROP DATABASE IF EXISTS {name}")
    pg.psql(f"CREATE DATABASE {name}")
    return pg.dsn(name)


def _ratio_row(ctx: Ctx, figure: str, ours: list[float], theirs: list[float], unit: str, anchor: str, target: str,
               limit: float, note: str) -> float:
    ratio = h.median(ours) / h.median(theirs)
    ctx.report.add(Row("backup", figure, f"{h.median(ours):.2f} {unit}", f"{h.median(theirs):.2f} {unit} ({anchor})",
                       ratio, target, ratio <= limit, note))
    return ratio


def figure_backup_codec(ctx: Ctx) -> None:
    pg, work = ctx.pg, ctx.work
    size = make_database(pg, ctx.mode.backup_mb)
    gb = size / 1e9
    dsn = pg.dsn(DB)
    dump_file = str(work / "anchor.dump")
    tool = pg_bin("pg_dump")
    anchor: list[dict[str, Any]] = []
    ours: list[dict[str, Any]] = []
    for i in range(ctx.mode.backup_repeats):  # alternating, so both sides see the same machine noise
        anchor.append(_run({"kind": "pg_dump", "tool": tool, "dsn": dsn, "file": dump_file}))
        repo = work / f"repo-zstd-{i}"
        ours.append(_run({"kind": "agent_dump", "dsn": dsn, "repository": f"file://{repo}", "method": "zstd"}))
        shutil.rmtree(repo, ignore_errors=True)
    runs = f"{len(ours)} alternating runs each; database {size / 1e6:.0f} MB (pg_database_size)"
    _ratio_row(ctx, f"Backup wall time, {size / 1e6:.0f} MB, zstd default vs pg_dump -Fc", [r["wall"] for r in ours],
               [r["wall"] for r in anchor], "s", "`pg_dump -Fc > file` + fsync", "≤ 0.5×", 0.5,
               f"{runs}; opsagent {h.spread([r['wall'] for r in ours])} s, pg_dump {h.spread([r['wall'] for r in anchor])} s"
               + ("" if size >= 1e9 else "; the issue's figure is for 1 GB: `make bench ARGS=--full`"))
    _ratio_row(ctx, "Backup output size vs pg_dump -Fc", [r["size"] / 1e6 for r in ours],
               [r["size"] / 1e6 for r in anchor], "MB", "pg_dump -Fc", "≤ 1.1×", 1.1, "zstd level 3 against gzip 6")
    _ratio_row(ctx, "Backup CPU-seconds per GB (agent + pg_dump) vs pg_dump -Fc", [r["cpu"] / gb for r in ours],
               [r["cpu"] / gb for r in anchor], "CPU-s/GB", "pg_dump -Fc", "≤ 0.4×", 0.4,
               "user+system of the process and its children (pg_dump); the server's own CPU is not counted: on RDS "
               "it is not the sidecar's")
    growth = max(r["peak_rss_mib"] - r["idle_rss_mib"] for r in ours)
    ctx.report.add(Row("backup", "Peak RSS of a zstd backup over the process before it", f"+{growth:.1f} MiB", "—",
                       None, "≤ idle + 50 MiB", growth <= 50, "VmHWM − VmRSS at start, in the dumping process; the "
                       "daemon's own figure is the 'Agent peak RSS during the backup' row"))
    for method, jobs in (("gzip", 1), ("lz4", 1), ("none", 1), ("zstd", 2)):
        repo = work / f"repo-{method}-{jobs}"
        r = _run({"kind": "agent_dump", "dsn": dsn, "repository": f"file://{repo}", "method": method, "jobs": jobs})
        shutil.rmtree(repo, ignore_errors=True)
        staging = f"; staging peak {r['staging_peak_bytes'] / 1e6:.1f} MB" if r.get("staging_peak_bytes") is not None else ""
        ctx.report.add(Row("backup", f"Backup, compression {method}" + (f", jobs {jobs}" if jobs > 1 else ""),
                           f"{r['wall']:.2f} s, {r['cpu']:.2f} CPU-s, {r['size'] / 1e6:.1f} MB",
                           f"{h.median([a['wall'] for a in anchor]):.2f} s, {h.median([a['cpu'] for a in anchor]):.2f} "
                           f"CPU-s, {h.median([a['size'] for a in anchor]) / 1e6:.1f} MB (pg_dump -Fc)",
                           r["wall"] / h.median([a["wall"] for a in anchor]), "information", None,
                           f"one run; manifest compression {r['compression']}{staging}"))
    _native_zstd(ctx, dsn, anchor)


def _native_zstd(ctx: Ctx, dsn: str, anchor: list[dict[str, Any]]) -> None:
    """On a 16+ pg_dump: its own zstd against the agent's, which ``pgdump.plan`` chooses between."""
    from opsagent.backup import pgtools

    tools = [t for t in (pgtools.tool_version(p) for p in pgtools.candidates("pg_dump")) if t.major >= 16]
    if not tools:
        ctx.report.add(Row("backup", "pg_dump --compress=zstd (16+) vs the agent's zstd", "—", "—", None,
                           "information", None, "no pg_dump 16+ on this machine; `pgdump.plan` keeps the agent's zstd "
                           "with more than one CPU and lets a 16+ pg_dump compress on one"))
        return
    tool = max(tools, key=lambda t: t.major)
    native, agent = [], []
    for i in range(ctx.mode.backup_repeats):
        native.append(_run({"kind": "pg_dump", "tool": tool.path, "dsn": dsn, "file": str(ctx.work / "native.dump"),
                            "args": ["--compress=zstd:3"]}))
        repo = ctx.work / f"repo-native-{i}"
        agent.append(_run({"kind": "agent_dump", "dsn": dsn, "repository": f"file://{repo}", "method": "zstd"}))
        shutil.rmtree(repo, ignore_errors=True)
    _ratio_row(ctx, f"Agent zstd vs pg_dump {tool.major} --compress=zstd:3", [r["wall"] for r in agent],
               [r["wall"] for r in native], "s", f"pg_dump {tool.version}", "information (≤ 1.0× keeps the agent's)",
               1.0, f"{len(agent)} alternating runs; CPU {h.median([r['cpu'] for r in agent]):.2f} vs "
               f"{h.median([r['cpu'] for r in native]):.2f} CPU-s; sizes {h.median([r['size'] for r in agent]) / 1e6:.1f} "
               f"vs {h.median([r['size'] for r in native]) / 1e6:.1f} MB")


def figure_restore_jobs(ctx: Ctx) -> None:
    pg, work = ctx.pg, ctx.work
    if int(pg.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{DB}'")) == 0:
        make_database(pg, ctx.mode.backup_mb)
    dsn = pg.dsn(DB)
    dump_file = str(work / "anchor.dump")
    _run({"kind": "pg_dump", "tool": pg_bin("pg_dump"), "dsn": dsn, "file": dump_file})
    repo = work / "repo-restore"
    parallel = _run({"kind": "agent_dump", "dsn": dsn, "repository": f"file://{repo}", "method": "zstd", "jobs": 2})
    single = _run({"kind": "agent_dump", "dsn": dsn, "repository": f"file://{repo}", "method": "zstd"})
    anchor, ours, stream = [], [], []
    for _ in range(ctx.mode.backup_repeats):
        anchor.append(_run({"kind": "pg_restore", "tool": pg_bin("pg_restore"), "dsn": _fresh(pg, "r_anchor"),
                            "file": dump_file}))
        ours.append(_run({"kind": "agent_restore", "repository": f"file://{repo}", "backup_id": parallel["backup_id"],
                          "dsn": _fresh(pg, "r_ours"), "jobs": 2}))
        stream.append(_run({"kind": "agent_restore", "repository": f"file://{repo}", "backup_id": single["backup_id"],
                            "dsn": _fresh(pg, "r_stream")}))
    _ratio_row(ctx, "Restore wall time, --jobs 2 (directory backup, staged) vs pg_restore single stream",
               [r["wall"] for r in ours], [r["wall"] for r in anchor], "s", "`pg_restore` of the pg_dump -Fc file",
               "≤ 0.7×", 0.7, f"{len(ours)} alternating runs; the agent's single-stream restore of a zstd archive: "
               f"{h.median([r['wall'] for r in stream]):.2f} s; staging (decompress + hash) is included")
    for name in ("r_anchor", "r_ours", "r_stream"):
        pg.psql(f"DROP DATABASE IF EXISTS {name}")
    shutil.rmtree(repo, ignore_errors=True)


def _cpu_cgroup(share: float) -> Path | None:
    """A CPU-limited cgroup for ``share`` of one CPU, if this machine lets the benchmark create one."""
    period, quota = 100_000, int(100_000 * share)
    candidates = ((Path("/sys/fs/cgroup/cpu"), {"cpu.cfs_period_us": str(period), "cpu.cfs_quota_us": str(quota)}),
                  (Path("/sys/fs/cgroup"), {"cpu.max": f"{quota} {period}"}))
    for base, files in candidates:
        folder = base / f"opsagent-bench-{os.getpid()}-{int(share * 100)}"
        try:
            folder.mkdir()
        except OSError:
            continue
        if not (folder / "cgroup.procs").exists():  # a plain directory (e.g. the tmpfs holding v1 mounts)
            folder.rmdir()
            continue
        try:
            for name, value in files.items():
                (folder / name).write_text(value)
            return folder
        except OSError:
            _drop_cgroup(folder)
    return None


def _drop_cgroup(folder: Path) -> None:
    try:
        folder.rmdir()  # empty once its processes exited
    except OSError:
        pass


def figure_dr_throughput(ctx: Ctx) -> None:
    pg, work = ctx.pg, ctx.work
    if int(pg.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{DB}'")) == 0:
        make_database(pg, ctx.mode.backup_mb)
    gb = int(pg.psql(f"SELECT pg_database_size('{DB}')")) / 1e9
    dsn = pg.dsn(DB)
    lines = []
    for share in (0.25, 1.0):
        group = _cpu_cgroup(share)
        how = "measured in a CPU cgroup" if group else "derived from CPU-seconds per GB"
        try:
            repo = work / f"repo-dr-{share}"
            figures: dict[str, float] = {}
            for label, jobs in (("dump", 1), ("dump, jobs 2", 2)):
                r = _run({"kind": "agent_dump", "dsn": dsn, "repository": f"file://{repo}", "method": "zstd",
                          "jobs": jobs, "cgroup": str(group) if group else None})
                figures[label] = gb / (r["wall"] if group else max(r["wall"], r["cpu"] / share)) * 3600
                figures[label + " id"] = r["backup_id"]  # type: ignore[assignment]
            for label, jobs, source in (("restore", 1, "dump"), ("restore, jobs 2", 2, "dump, jobs 2")):
                r = _run({"kind": "agent_restore", "repository": f"file://{repo}", "dsn": _fresh(pg, "r_dr"),
                          "backup_id": figures[source + " id"], "jobs": jobs, "cgroup": str(group) if group else None})
                figures[label] = gb / (r["wall"] if group else max(r["wall"], r["cpu"] / share)) * 3600
            shutil.rmtree(repo, ignore_errors=True)
        finally:
            if group:
                _drop_cgroup(group)
        cells = " | ".join(f"{figures[k]:.1f}" for k in ("dump", "dump, jobs 2", "restore", "restore, jobs 2"))
        lines.append(f"| {share:g} vCPU | {cells} | {how} |")
        ctx.report.add(Row("backup", f"DR throughput at {share:g} vCPU (GB/hour: dump, dump jobs 2, restore, restore "
                           f"jobs 2)", cells.replace(" |", ","), "—", None, "information", None,
                           f"{how}; {gb:.2f} GB database; zstd default"))
    pg.psql("DROP DATABASE IF EXISTS r_dr")
    _write_runbook_table(lines, f"`make bench` ({ctx.mode.name} mode, {gb:.2f} GB database, "
                                f"{time.strftime('%Y-%m-%d', time.gmtime())})")


def _write_runbook_table(lines: list[str], source: str) -> None:
    text = RUNBOOK.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        return
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    table = "\n".join([
        "| sidecar CPU | dump GB/h | dump GB/h, `jobs: 2` | restore GB/h | restore GB/h, `--jobs 2` | how |",
        "| --- | --- | --- | --- | --- | --- |", *lines, "", f"Source: {source}.",
    ])
    RUNBOOK.write_text(f"{head}{TABLE_START}\n{table}\n{TABLE_END}{tail}")


LIBRARIES = ("boto3", "sentry_sdk", "psycopg", "redis", "psutil", "zstandard", "lz4.frame", "pika", "rich",
             "opsagent.backup.service")
CONFIGS: dict[str, dict[str, Any]] = {
    "Redis only": {"checks": {"cpu": None, "memory": None, "redis": [{"name": "cache", "url": "redis://127.0.0.1:1/0"}]}},
    "monitoring (cpu, memory, postgres, redis)": {"checks": {
        "postgres": [{"name": "main", "dsn": "postgresql://postgres@127.0.0.1:1/postgres"}],
        "redis": [{"name": "cache", "url": "redis://127.0.0.1:1/0"}]}},
    "monitoring + backups to a file repository": {
        "checks": {"postgres": [{"name": "main", "dsn": "postgresql://postgres@127.0.0.1:1/postgres"}]},
        "backup": {"repository": "file:///tmp/opsagent-bench-footprint", "postgres": ["main"], "drill_schedule": None}},
}
_PROBE = """
import json, sys, time
from opsagent.config.models import Settings
from opsagent.runtime.agent import Agent
agent = Agent(Settings(**json.loads(sys.argv[1])))
agent.start()
time.sleep(2)
loaded = sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)
rss = int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) / 1024
agent.request_stop('probe')
agent.stop()
print(json.dumps({'loaded': loaded, 'rss': rss}))
"""


def _rss_after(statement: str) -> float:
    code = f"{statement}\nprint(int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) / 1024)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    return float(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else float("nan")


def figure_footprint(ctx: Ctx) -> None:
    bare = h.median([_rss_after("pass") for _ in range(3)])
    costs = {lib: _rss_after(f"import {lib}") - bare for lib in LIBRARIES}
    listed = ", ".join(f"{lib} +{cost:.1f}" for lib, cost in costs.items())
    ctx.report.add(Row("memory", "RSS each library costs when imported (MiB over a bare interpreter)", listed,
                       f"bare {bare:.1f} MiB", None, "information", None,
                       "`python -c 'import X'` each in a fresh process; costs overlap (shared dependencies)"))
    for name, config in CONFIGS.items():
        config = {"agent": {"listen": "127.0.0.1:0", "state_dir": str(ctx.work / "footprint-state")}, **config}
        proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(config), json.dumps(LIBRARIES)],
                              capture_output=True, text=True, timeout=120, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        if proc.returncode != 0:
            raise RuntimeError(f"footprint probe for {name} failed: {proc.stderr[-1500:]}")
        probe = json.loads(proc.stdout.strip().splitlines()[-1])
        unused = [lib for lib in probe["loaded"] if lib in ("boto3", "sentry_sdk", "zstandard", "lz4.frame", "pika")]
        ctx.report.add(Row("memory", f"Libraries an agent loads: {name}", ", ".join(probe["loaded"]) or "none of them",
                           f"{probe['rss']:.1f} MiB RSS after start", None, "nothing the config does not use",
                           not unused, "boto3, sentry-sdk, zstandard, lz4 and pika are imported only by the "
                           "configurations and runs that use them" + (f"; loaded anyway: {unused}" if unused else "")))


FIGURES = {
    "backup_codec": figure_backup_codec,
    "restore_jobs": figure_restore_jobs,
    "dr_throughput": figure_dr_throughput,
    "footprint": figure_footprint,
}
