"""The PostgreSQL password reaches pg_dump/pg_restore through a private 0600 PGPASSFILE, never the environment."""

from __future__ import annotations

import stat
from pathlib import Path

from opsagent.backup.engine import BackupEngine
from opsagent.backup.pgtools import candidates
from tests.fixtures.backup import SourceDb, backup_settings

PASSWORD = "child-env-S3cret"


def _spy(tmp_path: Path) -> str:
    """A pg_dump that records its environment and its passfile's mode and contents, then runs the real one."""
    real = candidates("pg_dump")[0]
    record = tmp_path / "spy.txt"
    tool = tmp_path / "spy" / "pg_dump"
    tool.parent.mkdir()
    tool.write_text(f"""#!/bin/sh
if [ "$1" = "--version" ]; then exec {real} --version; fi
{{ env; echo "MODE=$(stat -c %a "$PGPASSFILE")"; echo "DIRMODE=$(stat -c %a "$(dirname "$PGPASSFILE")")";
   echo "FILE=$PGPASSFILE"; cat "$PGPASSFILE"; echo "ARGS=$*"; }} > {record}
exec {real} "$@"
""")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return str(tool)


def test_pg_dump_gets_the_password_from_a_private_passfile(tmp_path: Path, source_db: SourceDb) -> None:
    """No PGPASSWORD in pg_dump's environment or argv; a 0600 file in a 0700 dir carries it and is gone afterwards."""
    dsn = source_db.server.dsn(source_db.dbname, password=PASSWORD)  # trust auth: accepted, and still secret
    settings = backup_settings(tmp_path, dsn=dsn, pg_dump_path=_spy(tmp_path))
    assert BackupEngine(settings).run().ok
    seen = (tmp_path / "spy.txt").read_text()
    env_part = seen.split("MODE=")[0]
    assert "PGPASSWORD" not in env_part and PASSWORD not in env_part
    args = seen.split("ARGS=")[1]
    assert PASSWORD not in args
    assert "MODE=600" in seen and "DIRMODE=700" in seen and PASSWORD in seen
    passfile = Path(seen.split("FILE=")[1].splitlines()[0])
    assert not passfile.exists() and not passfile.parent.exists()
