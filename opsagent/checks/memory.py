"""Memory utilisation of the task/container limit (ECS metadata, cgroup v2) or the host."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from opsagent.checks import host
from opsagent.checks.base import CheckError, Gauge, Reading, SimpleCheck
from opsagent.config import HostTarget


class MemoryCheck(SimpleCheck):
    kind: ClassVar[str] = "memory"

    def __init__(self, target: HostTarget) -> None:
        self.target = target
        self.cgroup_root = Path(target.cgroup_root)

    def measure(self) -> Reading:
        limit = host.cgroup_memory_limit(self.cgroup_root)
        source = host.choose_source(self.target.source, limit)
        if source == "ecs":
            ratio, details = host.ecs_memory(host.ecs_snapshot(self.target.deadline))
            gauges = tuple(
                Gauge("opsagent_container_memory_used_bytes", float(c["used_bytes"]), {"container": name},
                      "Working-set memory of a task container")
                for name, c in details["containers"].items()
            )
            return Reading(ratio, {"source": "ecs task metadata v4", **details}, gauges, source="ecs")
        if source == "cgroup":
            if limit is None:
                raise CheckError(f"source is cgroup but {self.cgroup_root / 'memory.max'} sets no limit")
            used = host.cgroup_memory_used(self.cgroup_root)
            return Reading(used / limit, {"source": "cgroup v2", "used_bytes": used, "limit_bytes": limit},
                           _gauges(used, limit), source="cgroup")
        import psutil

        vm = psutil.virtual_memory()
        used = vm.total - vm.available
        return Reading(used / vm.total, {"source": "host (psutil)", "used_bytes": used, "limit_bytes": vm.total},
                       _gauges(used, vm.total), source="host")


def _gauges(used: int, limit: int) -> tuple[Gauge, ...]:
    return (
        Gauge("opsagent_memory_used_bytes", float(used), {}, "Memory in use (working set)"),
        Gauge("opsagent_memory_limit_bytes", float(limit), {}, "Memory limit that utilisation is measured against"),
    )
