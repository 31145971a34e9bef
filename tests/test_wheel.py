"""The built wheel works outside the checkout: runbooks are package data, found by the CLI and the HTTP server.

The wheel is installed with ``--no-deps`` into a fresh ``python -m venv`` whose site-packages reuses
/work/devenv's dependencies through a ``.pth`` file: installing the dependencies from the local index
took ~30 s here, the wheel alone ~3 s, and what is under test is the wheel's own content.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
import requests
import yaml

from opsagent_testing.servers import free_port
from tests.fixtures.agent import poll

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv outside the checkout with only the built wheel installed into it; returns its bin directory."""
    base = tmp_path_factory.mktemp("wheel")
    # Build from a copy of what the sdist holds: an in-tree build leaves build/ behind, whose stale files
    # (a deleted module, a renamed runbook) setuptools would put into the next wheel.
    source = base / "source"
    shutil.copytree(ROOT / "opsagent", source / "opsagent", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    dist = base / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(source), "-w", str(dist)],
                   check=True, capture_output=True, timeout=180, cwd=base)
    (wheel,) = dist.glob("opsagent-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert "opsagent/runbooks/HighCPU.md" in zf.namelist()
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    purelib = Path(sysconfig.get_paths(vars={"base": str(env_dir), "platbase": str(env_dir)})["purelib"])
    (purelib / "devenv-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=180, env=_clean_env())
    return env_dir / "bin"


def _clean_env() -> dict[str, str]:
    """The environment without PYTHONPATH, so nothing of the checkout can be imported."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OPSAGENT_CONFIG")}


def test_wheel_prints_a_runbook_from_another_directory(installed: Path, tmp_path: Path) -> None:
    """`opsagent runbook HighCPU` from the installed wheel, run outside the checkout, prints the runbook and lists all."""
    run = subprocess.run([str(installed / "opsagent"), "runbook", "HighCPU"], cwd=tmp_path, env=_clean_env(),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("# HighCPU")
    where = subprocess.run([str(installed / "python"), "-c", "import opsagent; print(opsagent.__file__)"],
                           cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert not where.stdout.strip().startswith(str(ROOT)), where.stdout
    listing = subprocess.run([str(installed / "opsagent"), "runbook"], cwd=tmp_path, env=_clean_env(),
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0 and "RedisMemoryHigh" in listing.stdout and "DisasterRecovery" in listing.stdout


def test_wheel_agent_serves_runbooks_over_http(installed: Path, tmp_path: Path) -> None:
    """The installed wheel's daemon, started outside the checkout, answers GET /runbooks/HighCPU.md with the runbook."""
    port = free_port()
    config = tmp_path / "opsagent.yaml"
    config.write_text(yaml.safe_dump({"agent": {"listen": f"127.0.0.1:{port}", "state_dir": str(tmp_path / "state")},
                                      "checks": {"cpu": {"interval": "5s"}, "memory": {"interval": "5s"}}}))
    proc = subprocess.Popen([str(installed / "opsagent"), "run", "--config", str(config)], cwd=tmp_path,
                            env=_clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def runbook() -> requests.Response | None:
            try:
                return requests.get(f"http://127.0.0.1:{port}/runbooks/HighCPU.md", timeout=2)
            except requests.ConnectionError:
                assert proc.poll() is None, "the daemon exited"
                return None

        resp = poll(runbook, timeout=30)
        assert resp.status_code == 200
        assert resp.text.startswith("# HighCPU")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
