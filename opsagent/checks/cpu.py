"""CPU utilisation of the task/container limit (ECS metadata, cgroup v2) or the host."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import ClassVar

from opsagent.checks import host
from opsagent.checks.base import CheckError, Gauge, Reading, SimpleCheck
from opsagent.config import HostTarget


class CpuCheck(SimpleCheck):
    kind: ClassVar[str] = "cpu"

    def __init__(self, target: HostTarget) -> None:
        self.target = target
        self.cgroup_root = Path(target.cgroup_root)
        self._sampler = host.CpuSampler()
        # The first run needs a second counter sample; 250 ms (2-3 % resolution at USER_HZ=100) keeps
        # /readyz within the 1.5 s start budget, and HighCPU's `for` smooths a coarse first reading.
        self._warm_wait = min(0.25, target.deadline / 4)

    def measure(self) -> Reading:
        limit = host.cgroup_cpu_limit(self.cgroup_root)
        source = host.choose_source(self.target.source, limit)
        if source == "ecs":
            ratio, details = host.ecs_cpu(host.ecs_snapshot(self.target.deadline))
            gauges = tuple(
                Gauge("opsagent_container_cpu_utilisation_ratio", c["utilisation"], {"container": name},
                      "CPU used by a task container over its limit")
                for name, c in details["containers"].items() if c["utilisation"] is not None
            )
            return Reading(ratio, {"source": "ecs task metadata v4", **details}, gauges, source="ecs")
        if source == "cgroup":
            if limit is None:
                raise CheckError(f"source is cgroup but {self.cgroup_root / 'cpu.max'} sets no limit")
            cores = self._sample(lambda: host.cgroup_cpu_usage_seconds(self.cgroup_root))
            return Reading(cores / limit, {"source": "cgroup v2", "limit_cores": limit, "cores_used": round(cores, 4)},
                           (Gauge("opsagent_cpu_limit_cores", limit, {}, "CPU limit in cores"),), source="cgroup")
        import psutil

        count = psutil.cpu_count() or 1
        cores = self._sample(lambda: _busy_seconds(psutil))
        return Reading(min(1.0, cores / count), {"source": "host (psutil)", "cores": count, "cores_used": round(cores, 4)},
                       (Gauge("opsagent_cpu_limit_cores", float(count), {}, "CPU limit in cores"),), source="host")

    def _sample(self, read: Callable[[], float]) -> float:
        """Cores used since the previous run; the very first run waits briefly for a second sample."""
        cores = self._sampler.cores(read())
        if cores is None:
            time.sleep(self._warm_wait)  # first run only: a rate needs two samples
            cores = self._sampler.cores(read())
        if cores is None:
            raise CheckError("CPU counter went backwards; retry next interval")
        return cores


def _busy_seconds(psutil: ModuleType) -> float:
    """Host CPU seconds spent not idle, summed over all cores."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))
