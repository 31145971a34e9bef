"""scripts/run-prereqs.sh: `make run` on a bare Debian machine installs python3-venv and pg_dump when they are missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "run-prereqs.sh"


def _machine(tmp_path: Path, *, ensurepip: bool, pg_dump: bool) -> tuple[dict[str, str], Path]:
    """A PATH with only a python3 (with or without ensurepip), maybe pg_dump, and an apt-get that records its calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt.log"
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    missing = "" if ensurepip else 'case "$*" in *ensurepip*) exit 1;; esac\n'
    (bin_dir / "python3").write_text(f"#!/bin/sh\n{missing}exec {sys.executable} \"$@\"\n")
    if pg_dump:
        (bin_dir / "pg_dump").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("id",):
        os.symlink(shutil.which(tool) or f"/usr/bin/{tool}", bin_dir / tool)
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return {"PATH": str(bin_dir), "HOME": str(tmp_path)}, log


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def test_a_bare_machine_gets_python3_venv_and_the_postgresql_client(tmp_path: Path) -> None:
    """Without ensurepip and pg_dump, the script installs python3-venv and postgresql-client through apt-get."""
    if os.geteuid() != 0:
        pytest.skip("the script would call sudo; the suite runs as root here")
    env, log = _machine(tmp_path, ensurepip=False, pg_dump=False)
    proc = _run(env)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "update -qq"
    assert calls[1].startswith("install -y") and calls[1].split()[-2:] == ["python3-venv", "postgresql-client"]


def test_a_prepared_machine_installs_nothing(tmp_path: Path) -> None:
    """With venv and pg_dump present the script only checks: apt-get is never called."""
    env, log = _machine(tmp_path, ensurepip=True, pg_dump=True)
    proc = _run(env)
    assert proc.returncode == 0, proc.stderr
    assert not log.exists()
