"""cpu and memory: ECS task metadata v4, cgroup v2 limits, or the host."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from opsagent.checks.cpu import CpuCheck
from opsagent.checks.memory import MemoryCheck
from opsagent.config import HostTarget
from opsagent.runtime.runner import TargetRunner
from tests.fixtures.http_stub import StubServer

DATA = Path(__file__).parent / "data"


@pytest.fixture
def ecs_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubServer]:
    task = (DATA / "ecs_task.json").read_bytes()
    stats = (DATA / "ecs_task_stats.json").read_bytes()
    server = StubServer({
        "/v4/abc/task": lambda: (200, "application/json", task),
        "/v4/abc/task/stats": lambda: (200, "application/json", stats),
    })
    monkeypatch.setenv("ECS_CONTAINER_METADATA_URI_V4", f"{server.url}/v4/abc")
    yield server
    server.close()


def test_ecs_cpu_measures_the_app_container_against_its_limit(ecs_endpoint: StubServer) -> None:
    """Inside ECS the app container's CPU is compared with its own 768-unit limit."""
    reading = CpuCheck(HostTarget()).measure()
    # api: 7 s of CPU over 10 s = 0.7 cores; limit 768/1024 = 0.75 cores -> 0.9333
    assert reading.source == "ecs"
    assert reading.value == pytest.approx(0.7 / 0.75, rel=1e-6)
    assert reading.details["containers"]["api"]["cores"] == pytest.approx(0.7)
    assert reading.details["containers"]["opsagent"]["utilisation"] == pytest.approx(0.05 / 0.25)
    names = {g.labels["container"] for g in reading.gauges}
    assert names == {"api", "opsagent"}


def test_ecs_memory_uses_working_set_against_container_limit(ecs_endpoint: StubServer) -> None:
    """Memory is usage minus inactive file cache over the container's 1536 MiB limit."""
    reading = MemoryCheck(HostTarget()).measure()
    assert reading.source == "ecs"
    assert reading.value == pytest.approx((1509949440 - 100663296) / (1536 * 1024 * 1024), rel=1e-6)


def test_ecs_endpoint_down_is_reported_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dead metadata endpoint makes the check down with a clear error, not a crash."""
    from opsagent_testing.servers import closed_port

    monkeypatch.setenv("ECS_CONTAINER_METADATA_URI_V4", f"http://127.0.0.1:{closed_port()}/v4/x")
    runner = TargetRunner("memory", "task", lambda: MemoryCheck(HostTarget()), deadline=5)
    result = runner.run()
    assert not result.up
    assert "refused" in (result.error or "").lower()


def fake_cgroup(root: Path, cpu_max: str = "50000 100000", usage_usec: int = 1_000_000,
                mem_max: str = "1073741824", mem_current: int = 805306368, inactive: int = 268435456) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(cpu_max + "\n")
    (root / "cpu.stat").write_text(f"usage_usec {usage_usec}\nuser_usec {usage_usec}\nsystem_usec 0\n")
    (root / "memory.max").write_text(mem_max + "\n")
    (root / "memory.current").write_text(f"{mem_current}\n")
    (root / "memory.stat").write_text(f"anon 1000\nfile 2000\ninactive_file {inactive}\nactive_file 10\n")
    return root


def test_cgroup_memory_against_memory_max(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a cgroup v2 memory limit, utilisation is working set over memory.max."""
    monkeypatch.delenv("ECS_CONTAINER_METADATA_URI_V4", raising=False)
    root = fake_cgroup(tmp_path / "cg")
    reading = MemoryCheck(HostTarget(cgroup_root=str(root))).measure()
    assert reading.source == "cgroup"
    assert reading.value == pytest.approx((805306368 - 268435456) / 1073741824)


def test_cgroup_cpu_rate_against_cpu_max(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU is the usage_usec rate between two runs over the cpu.max quota (0.5 cores here)."""
    monkeypatch.delenv("ECS_CONTAINER_METADATA_URI_V4", raising=False)
    root = fake_cgroup(tmp_path / "cg", usage_usec=1_000_000)
    check = CpuCheck(HostTarget(cgroup_root=str(root)))
    clock = iter([100.0, 110.0])
    monkeypatch.setattr("opsagent.checks.host.time.monotonic", lambda: next(clock))
    check._sampler.cores(1.0)  # first sample at t=100, 1 s of CPU used so far
    fake_cgroup(root, usage_usec=5_000_000)  # 4 s more CPU over 10 s = 0.4 cores
    reading = check.measure()
    assert reading.source == "cgroup"
    assert reading.value == pytest.approx(0.4 / 0.5)


def test_unlimited_cgroup_falls_back_to_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cpu.max 'max' means no limit, so the host's figures are used and the status says so."""
    monkeypatch.delenv("ECS_CONTAINER_METADATA_URI_V4", raising=False)
    root = fake_cgroup(tmp_path / "cg", cpu_max="max 100000", mem_max="max")
    cpu = CpuCheck(HostTarget(cgroup_root=str(root), interval=5)).measure()
    mem = MemoryCheck(HostTarget(cgroup_root=str(root))).measure()
    assert cpu.source == mem.source == "host"
    assert 0.0 <= cpu.value <= 1.0 and 0.0 < mem.value < 1.0
    assert "psutil" in mem.details["source"]
