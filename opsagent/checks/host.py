"""Where CPU and memory numbers come from (SPEC §8), shared by the cpu and memory checks.

Three sources, in order of preference when ``source: auto``:

* ``ecs``    - the ECS task metadata endpoint v4 (``ECS_CONTAINER_METADATA_URI_V4``):
  ``/task`` for limits and ``/task/stats`` for Docker-style stats of every
  container in the task, so the app container next to the sidecar is measured.
* ``cgroup`` - cgroup v2 files (``cpu.max``, ``cpu.stat``, ``memory.max``,
  ``memory.current``) when a limit is set.
* ``host``   - psutil, the whole machine.

Utilisation is always a ratio of the limit that applies.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from opsagent.checks.base import CheckError

ECS_ENV = "ECS_CONTAINER_METADATA_URI_V4"
_NS = 1e9


def ecs_base_url() -> str | None:
    return os.environ.get(ECS_ENV) or None


def choose_source(configured: str, cgroup_limit: object | None) -> str:
    """``auto`` picks ECS metadata inside ECS, cgroup v2 when it sets a limit, else the host."""
    if configured != "auto":
        return configured
    if ecs_base_url():
        return "ecs"
    return "cgroup" if cgroup_limit is not None else "host"


def ecs_snapshot(deadline: float) -> EcsSnapshot:
    """Both metadata documents, within the run's deadline."""
    base = ecs_base_url()
    if not base:
        raise CheckError(f"source is ecs but {ECS_ENV} is not set")
    return read_ecs(base, timeout=min(5.0, deadline))


def fetch_json(url: str, timeout: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@dataclass(frozen=True)
class EcsSnapshot:
    task: dict[str, Any]
    stats: dict[str, Any]


def read_ecs(base: str, timeout: float) -> EcsSnapshot:
    base = base.rstrip("/")
    task = fetch_json(f"{base}/task", timeout)
    stats = fetch_json(f"{base}/task/stats", timeout)
    if not isinstance(task, dict) or not isinstance(stats, dict):
        raise CheckError("ECS task metadata endpoint returned an unexpected document (expected JSON objects)")
    return EcsSnapshot(task, stats)


def _parse_time(text: str | None) -> float | None:
    if not text or text.startswith("0001-"):
        return None
    # Docker timestamps carry nanoseconds; datetime takes microseconds.
    head, _, frac = text.rstrip("Z").partition(".")
    frac = (frac[:6]).ljust(6, "0") if frac else "000000"
    return datetime.fromisoformat(f"{head}.{frac}+00:00").timestamp()


def ecs_containers(snapshot: EcsSnapshot) -> list[dict[str, Any]]:
    """Containers of the task with their stats and limits, skipping those without stats."""
    out = []
    for container in snapshot.task.get("Containers", []):
        stats = snapshot.stats.get(container.get("DockerId", ""))
        if stats:
            out.append({"name": container.get("Name", "?"), "limits": container.get("Limits", {}), "stats": stats})
    return out


def ecs_cpu(snapshot: EcsSnapshot) -> tuple[float, dict[str, Any]]:
    """Highest CPU utilisation of the task limit or any container's own limit."""
    task_vcpu = float(snapshot.task.get("Limits", {}).get("CPU") or 0)
    total_cores = 0.0
    containers: dict[str, Any] = {}
    worst = 0.0
    for c in ecs_containers(snapshot):
        stats = c["stats"]
        used = stats.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage")
        prev = stats.get("precpu_stats", {}).get("cpu_usage", {}).get("total_usage")
        read, preread = _parse_time(stats.get("read")), _parse_time(stats.get("preread"))
        if used is None or prev is None or read is None or preread is None or read <= preread:
            continue
        cores = max(0.0, (used - prev) / _NS / (read - preread))
        total_cores += cores
        limit_units = float(c["limits"].get("CPU") or 0)
        limit_cores = limit_units / 1024.0 if limit_units else task_vcpu
        ratio = cores / limit_cores if limit_cores else None
        containers[c["name"]] = {"cores": round(cores, 4), "limit_cores": limit_cores or None,
                                 "utilisation": None if ratio is None else round(ratio, 4)}
        if ratio is not None:
            worst = max(worst, ratio)
    if not containers:
        raise CheckError("ECS task stats hold no CPU samples yet (precpu_stats empty); retry next interval")
    if task_vcpu:
        worst = max(worst, total_cores / task_vcpu)
    return worst, {"task_cpu_limit_vcpu": task_vcpu or None, "task_cores_used": round(total_cores, 4),
                   "containers": containers}


def ecs_memory(snapshot: EcsSnapshot) -> tuple[float, dict[str, Any]]:
    """Highest memory utilisation (working set: usage minus inactive file cache) of task or container limit."""
    task_mib = float(snapshot.task.get("Limits", {}).get("Memory") or 0)
    total = 0.0
    worst = 0.0
    containers: dict[str, Any] = {}
    for c in ecs_containers(snapshot):
        mem = c["stats"].get("memory_stats", {})
        usage = mem.get("usage")
        if usage is None:
            continue
        inner = mem.get("stats", {})
        cache = inner.get("inactive_file", inner.get("total_inactive_file", inner.get("cache", 0))) or 0
        used = max(0.0, float(usage) - float(cache))
        total += used
        limit_mib = float(c["limits"].get("Memory") or 0)
        limit = limit_mib * 1024 * 1024 if limit_mib else (task_mib * 1024 * 1024 if task_mib else 0.0)
        ratio = used / limit if limit else None
        containers[c["name"]] = {"used_bytes": int(used), "limit_bytes": int(limit) or None,
                                 "utilisation": None if ratio is None else round(ratio, 4)}
        if ratio is not None:
            worst = max(worst, ratio)
    if not containers:
        raise CheckError("ECS task stats hold no memory figures")
    if task_mib:
        worst = max(worst, total / (task_mib * 1024 * 1024))
    return worst, {"task_memory_limit_bytes": int(task_mib * 1024 * 1024) or None, "task_used_bytes": int(total),
                   "containers": containers}


# -- cgroup v2 ------------------------------------------------------------------------------------


def cgroup_cpu_limit(root: Path) -> float | None:
    """Cores allowed by ``cpu.max`` (``quota period``), None when unlimited or absent."""
    try:
        fields = (root / "cpu.max").read_text().split()
    except OSError:
        return None
    if not fields or fields[0] == "max":
        return None
    period = int(fields[1]) if len(fields) > 1 else 100000
    return int(fields[0]) / period


def cgroup_cpu_usage_seconds(root: Path) -> float:
    for line in (root / "cpu.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    raise CheckError(f"{root / 'cpu.stat'} has no usage_usec line")


def cgroup_memory_limit(root: Path) -> int | None:
    try:
        text = (root / "memory.max").read_text().strip()
    except OSError:
        return None
    return None if text == "max" else int(text)


def cgroup_memory_used(root: Path) -> int:
    current = int((root / "memory.current").read_text().strip())
    inactive = 0
    try:
        for line in (root / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "inactive_file":
                inactive = int(value)
                break
    except OSError:
        pass
    return max(0, current - inactive)


class CpuSampler:
    """Turns a cumulative CPU-seconds counter into utilisation between successive calls."""

    def __init__(self) -> None:
        self._last: tuple[float, float] | None = None

    def cores(self, usage_seconds: float, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        last, self._last = self._last, (now, usage_seconds)
        if last is None or now <= last[0] or usage_seconds < last[1]:
            return None
        return (usage_seconds - last[1]) / (now - last[0])
