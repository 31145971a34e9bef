"""The backup benchmark figures (issue 22) run end to end on a tiny database, so `make bench` cannot rot unseen.

The figures themselves are ratios for `make bench`; here only that every kind of run (pg_dump, the agent's
dump in every method and with jobs, pg_restore, the agent's staged restore) completes and reports numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import backup_figures
from benchmarks.report import Row
from opsagent_testing.servers import PostgresServer


@dataclass
class _Mode:
    name: str = "smoke"
    backup_mb: int = 4
    backup_repeats: int = 1


@dataclass
class _Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)


@dataclass
class _Ctx:
    work: Path
    pg: PostgresServer
    mode: _Mode = field(default_factory=_Mode)
    report: _Report = field(default_factory=_Report)


def test_backup_and_restore_figures_complete_on_a_small_database(tmp_path: Path) -> None:
    pg = PostgresServer(max_connections=20).start()
    try:
        ctx = _Ctx(tmp_path, pg)
        backup_figures.figure_backup_codec(ctx)
        backup_figures.figure_restore_jobs(ctx)
        restored = int(pg.psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'r\\_%'"))
    finally:
        pg.cleanup()
    figures = {row.figure: row for row in ctx.report.rows}
    wall = next(r for name, r in figures.items() if name.startswith("Backup wall time"))
    assert wall.ratio is not None and wall.ratio > 0
    assert {"Backup, compression gzip", "Backup, compression lz4", "Backup, compression none"} <= set(figures)
    assert any(name.startswith("Restore wall time, --jobs 2") and r.ratio for name, r in figures.items())
    assert restored == 0  # the restore figure drops its scratch databases
