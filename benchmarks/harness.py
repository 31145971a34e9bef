"""Plumbing for the side-by-side benchmark: processes, RSS/CPU sampling, HTTP timing, exporters, the agent.

Everything runs on loopback against private servers started by
``tests.fixtures`` (the same classes the test suite uses). Figures are taken as
ratios between opsagent and an anchor measured in the same run, interleaved
where possible, because this shared 2-core machine is noisy.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from opsagent_testing.servers import free_port, wait_for_port

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
OPSAGENT = str(VENV_BIN / "opsagent")
EXPORTER_PACKAGES = {
    "prometheus-postgres-exporter": "prometheus-postgres-exporter",
    "prometheus-redis-exporter": "prometheus-redis-exporter",
    "prometheus-node-exporter": "prometheus-node-exporter",
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- what needs installing ------------------------------------------------------------------------


def ensure_exporters() -> None:
    """apt-get the three Go exporters (the anchors) when they are missing."""
    missing = [pkg for binary, pkg in EXPORTER_PACKAGES.items() if shutil.which(binary) is None]
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print(f"bench: installing {' '.join(missing)}", flush=True)
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdout=subprocess.DEVNULL)


# -- statistics -----------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> str:
    """min–max of repeated figures, for the report."""
    if not values:
        return "n/a"
    return f"{min(values):.3g}–{max(values):.3g} (n={len(values)})"


# -- processes ------------------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    """Resident set size of one process in MiB (VmRSS)."""
    return _status_kib(pid, "VmRSS") / 1024.0


def hwm_mib(pid: int) -> float:
    """Peak resident set size of one process in MiB (VmHWM)."""
    return _status_kib(pid, "VmHWM") / 1024.0


def _status_kib(pid: int, field_name: str) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return float(line.split()[1])
    raise RuntimeError(f"no {field_name} for pid {pid}")


def threads(pid: int) -> int:
    return int(_status_kib(pid, "Threads"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    user, system = cpu_split(pid)
    return user + system


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds the process has used so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


@dataclass
class Proc:
    """A child process we started, with its log; stopped with SIGTERM then SIGKILL."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 25.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def spawn(name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None) -> Proc:
    log = workdir / f"{name}.log"
    fh = open(log, "ab")
    popen = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                             cwd=str(REPO), start_new_session=True)
    fh.close()
    return Proc(name, popen, log)


# -- HTTP -----------------------------------------------------------------------------------------


def http_get(port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def timed_get(port: int, path: str, headers: dict[str, str] | None = None) -> float:
    """Seconds for one GET on a fresh connection, from connect to the last body byte."""
    started = time.perf_counter()
    status, _ = http_get(port, path, headers)
    elapsed = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"GET {path} on :{port} answered {status}")
    return elapsed


def timed_keepalive_gets(port: int, path: str, count: int) -> list[float]:
    """Seconds per GET for ``count`` requests on one kept-alive connection (how Prometheus scrapes).

    A Python client on a server without TCP_NODELAY waits ~40 ms per request here (Nagle + delayed ACK);
    Go clients do not, so this is the figure that shows whether the server sets it.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    times: list[float] = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            times.append(time.perf_counter() - started)
            if resp.status != 200:
                raise RuntimeError(f"GET {path} on :{port} answered {resp.status}")
    finally:
        conn.close()
    return times


def wait_http(port: int, path: str, timeout: float = 30.0, proc: Proc | None = None) -> float:
    """Poll until GET path answers 200; return the monotonic time it first did."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, http.client.HTTPException):
            if http_get(port, path, timeout=1.0)[0] == 200:
                return time.monotonic()
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited: {proc.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"GET {path} on :{port} not 200 after {timeout}s"
                               + (f"; log: {proc.tail()}" if proc else ""))
        time.sleep(0.01)


def sample_count(body: bytes) -> int:
    """Number of samples (non-comment, non-empty lines) in a text exposition."""
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


def scrape_value(body: bytes, name: str, **labels: str) -> list[float]:
    """Values of samples named ``name`` whose labels include ``labels``."""
    out = []
    for line in body.decode(errors="replace").splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            with contextlib.suppress(ValueError):
                out.append(float(value))
    return out


# -- the anchors ----------------------------------------------------------------------------------


@dataclass
class Exporters:
    """postgres_exporter + redis_exporter + node_exporter against the same private targets."""

    procs: dict[str, Proc] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    @classmethod
    def start(cls, workdir: Path, pg_dsn: str, redis_addr: str) -> Exporters:
        ex = cls()
        specs = {
            "postgres_exporter": (["prometheus-postgres-exporter"], {"DATA_SOURCE_NAME": pg_dsn + "?sslmode=disable"}),
            "redis_exporter": (["prometheus-redis-exporter", f"--redis.addr={redis_addr}"], {}),
            "node_exporter": (["prometheus-node-exporter", "--no-collector.systemd"], {}),
        }
        for name, (argv, env) in specs.items():
            port = free_port()
            ex.ports[name] = port
            ex.procs[name] = spawn(name, [*argv, f"--web.listen-address=127.0.0.1:{port}"], workdir, env)
        for name, port in ex.ports.items():
            wait_http(port, "/metrics", proc=ex.procs[name])
        return ex

    def scrape_all(self) -> None:
        for port in self.ports.values():
            http_get(port, "/metrics")

    def rss_sum(self) -> float:
        return sum(rss_mib(p.pid) for p in self.procs.values())

    def stop(self) -> None:
        for p in self.procs.values():
            p.stop(5)


# -- the agent ------------------------------------------------------------------------------------


@dataclass
class AgentProc:
    """``opsagent run --config FILE`` as users start it, on a free port."""

    proc: Proc
    port: int
    started: float  # monotonic time just before the process was spawned
    config: dict[str, Any]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def metrics(self, gzip: bool = False) -> bytes:
        status, body = http_get(self.port, "/metrics", {"Accept-Encoding": "gzip"} if gzip else None)
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        return body

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Seconds from spawn to the first /readyz 200."""
        return wait_http(self.port, "/readyz", timeout, self.proc) - self.started

    def stop(self) -> None:
        self.proc.stop()


def write_config(workdir: Path, config: dict[str, Any], name: str) -> tuple[Path, int, dict[str, Any]]:
    """The agent's YAML with a free listen port and its own state dir: (path, port, full config)."""
    port = free_port()
    config = {**config, "agent": {"name": "bench", "listen": f"127.0.0.1:{port}",
                                  "state_dir": str(workdir / f"{name}-state"), **config.get("agent", {})}}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, port, config


def start_agent(workdir: Path, config: dict[str, Any], name: str = "opsagent",
                env: dict[str, str] | None = None) -> AgentProc:
    path, port, config = write_config(workdir, config, name)
    started = time.monotonic()
    proc = spawn(name, [OPSAGENT, "run", "--config", str(path)], workdir, env)
    return AgentProc(proc, port, started, config)


@contextlib.contextmanager
def running_agent(workdir: Path, config: dict[str, Any], name: str = "opsagent",
                  env: dict[str, str] | None = None) -> Iterator[AgentProc]:
    agent = start_agent(workdir, config, name, env)
    try:
        yield agent
    finally:
        agent.stop()


def workdir(prefix: str = "opsagent-bench-") -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    return path


def every(period: float, duration: float, fn: Callable[[float], None]) -> None:
    """Call ``fn(elapsed)`` every ``period`` seconds for ``duration`` seconds, on schedule (no drift)."""
    start = time.monotonic()
    n = 0
    while True:
        at = start + n * period
        now = time.monotonic()
        if at - start > duration:
            return
        if at > now:
            time.sleep(at - now)
        fn(time.monotonic() - start)
        n += 1


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout}s")
        time.sleep(interval)


__all__ = [
    "AgentProc", "Exporters", "Proc", "cpu_seconds", "cpu_split", "ensure_exporters", "every", "free_port", "http_get",
    "hwm_mib", "median", "pct", "rss_mib", "running_agent", "sample_count", "scrape_value", "spawn", "spread",
    "start_agent", "threads", "timed_get", "wait_for", "wait_for_port", "wait_http", "workdir", "write_config",
]
