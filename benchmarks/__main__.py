"""`make bench`: opsagent against postgres_exporter + redis_exporter + node_exporter, side by side.

    python -m benchmarks [--quick | --full] [--only FIGURE ...] [--out benchmarks/RESULTS.md]
                         [--save-baseline]

Installs the exporters when missing, starts a private PostgreSQL, PgBouncer and
Redis (the test suite's own fixtures), measures every figure of issue 9 and
writes the table to ``benchmarks/RESULTS.md`` (plus the raw figures as
``benchmarks/RESULTS.json``; ``--out`` names both). ``--quick`` (the default) compresses the long
runs so the whole thing finishes within about 15 minutes on a 2-core machine;
``--full`` uses the issue's literal durations and a ≥ 1 GB database.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import traceback
from pathlib import Path

from benchmarks import harness as h
from benchmarks.figures import FIGURES, Ctx, Mode
from benchmarks.report import Report, load_json

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="compressed durations (default)")
    group.add_argument("--full", action="store_true", help="the issue's literal durations and a >= 1 GB backup")
    parser.add_argument("--only", nargs="+", choices=sorted(FIGURES), metavar="FIGURE",
                        help=f"only these figures: {', '.join(FIGURES)}")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--save-baseline", action="store_true",
                        help="also store this run's figures as the 'before' column (benchmarks/baseline.json)")
    args = parser.parse_args(argv)

    mode = Mode.full() if args.full else Mode.quick()
    h.ensure_exporters()
    report = Report(mode.name, compression=mode.describe(), commit=_commit())
    work = h.workdir()
    names = args.only or list(FIGURES)

    from opsagent_testing.pgbouncer import PgBouncerServer
    from opsagent_testing.servers import PostgresServer, RedisServer

    print(f"bench: {mode.name} mode, figures: {', '.join(names)}; work dir {work}", flush=True)
    pg = PostgresServer(max_connections=400, base=work,
                        extra_conf={"shared_buffers": "64MB", "max_wal_size": "2GB"}).start()
    bouncer = PgBouncerServer(pg, pool_size=2).start()
    redis = RedisServer().start()
    try:
        ctx = Ctx(mode, report, work, pg, bouncer, redis)
        for name in names:
            started = time.monotonic()
            print(f"bench: -- {name}", flush=True)
            try:
                FIGURES[name](ctx)
            except Exception as exc:  # noqa: BLE001 - one broken figure must not hide the others
                traceback.print_exc()
                report.error(name, f"{type(exc).__name__}: {exc}")
            print(f"bench: -- {name} took {time.monotonic() - started:.0f} s", flush=True)
    finally:
        redis.cleanup()
        bouncer.cleanup()
        pg.cleanup()
        shutil.rmtree(work, ignore_errors=True)

    raw = report.to_json()
    args.out.with_suffix(".json").write_text(json.dumps(_lean(raw), indent=1))
    if args.save_baseline:
        (HERE / "baseline.json").write_text(json.dumps(_lean(raw), indent=1))
    notes = (HERE / "NOTES.md").read_text() if (HERE / "NOTES.md").exists() else ""
    args.out.write_text(report.render(load_json(HERE / "baseline.json"), notes))
    print(f"bench: wrote {args.out}", flush=True)
    return 1 if report.errors else 0


def _commit() -> str:
    """The checked-out commit, marked dirty when product code differs from it."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=HERE.parent, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "agent", "checks"], capture_output=True,
                               text=True, cwd=HERE.parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + (" (with uncommitted changes in agent/ or checks/)" if dirty else "")


def _lean(raw: dict) -> dict:  # type: ignore[type-arg]
    """Drop bulky per-sample series from the stored JSON."""
    for row in raw["rows"]:
        row["raw"] = {k: v for k, v in row.get("raw", {}).items() if k != "samples"}
    return raw


if __name__ == "__main__":
    sys.exit(main())
