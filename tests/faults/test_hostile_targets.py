"""Hostile targets (issue 21): endless rows, a 300 MB INFO, a 400 k-route exposition, HELLO answered with a string.

Each runs ``opsagent check`` in its own process against a fake server and
asserts what a user would see: the target reported down with a reason, no
agent bug, and the process's peak RSS under 256 MiB (the sidecar's task has
384 MiB). The fakes speak just enough of each protocol to get past the
handshake, then misbehave.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

RSS_CEILING_KIB = 256 * 1024

# Runs the CLI and reports the process's peak RSS (KiB) on stderr's last line. VmHWM, not getrusage's
# ru_maxrss: Linux carries the forking parent's peak across exec into ru_maxrss, so a child of a big
# pytest process would report the parent's size (seen: 398 MiB in a full run, 60 MiB alone).
_MEASURED_CLI = (
    "import sys\n"
    "from opsagent.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "hwm = next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
    "print('MAXRSS', hwm, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


class FakeServer:
    """A loopback TCP server running ``serve(conn)`` per connection in a thread."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self._serve = serve
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(30)
            self._serve(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise OSError("client went away")
        data += chunk
    return data


def _pg_message(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!I", len(payload) + 4) + payload


def endless_rows_postgres(conn: socket.socket) -> None:
    """Handshake like PostgreSQL 15, then answer any query with DataRows that never end."""
    while True:  # SSLRequest / GSSENCRequest are refused with 'N'; a CancelRequest is read and dropped
        length, code = struct.unpack("!II", _recv_exact(conn, 8))
        if code in (80877103, 80877104):
            conn.sendall(b"N")
            continue
        _recv_exact(conn, length - 8)
        if code == 80877102:
            return
        break
    hello = _pg_message(b"R", struct.pack("!I", 0))
    for key, value in (("server_version", "15.0"), ("client_encoding", "UTF8"), ("DateStyle", "ISO, MDY"),
                       ("integer_datetimes", "on"), ("standard_conforming_strings", "on")):
        hello += _pg_message(b"S", key.encode() + b"\0" + value.encode() + b"\0")
    hello += _pg_message(b"K", struct.pack("!II", 4242, 99)) + _pg_message(b"Z", b"I")
    conn.sendall(hello)
    conn.recv(65536)  # Parse/Bind/Describe/Execute/Sync
    column = b"x\0" + struct.pack("!IhIhih", 0, 0, 25, -1, -1, 0)
    conn.sendall(_pg_message(b"1", b"") + _pg_message(b"2", b"") + _pg_message(b"T", struct.pack("!h", 1) + column))
    row = _pg_message(b"D", struct.pack("!hI", 1, 64) + b"r" * 64)
    burst = row * 1000
    while True:
        conn.sendall(burst)


def huge_info_redis(conn: socket.socket) -> None:
    """Answer HELLO like Redis 7 (RESP3), then INFO with a 300 MB bulk string."""
    while True:
        data = conn.recv(65536)
        if not data:
            return
        if b"HELLO" in data.upper():
            conn.sendall(b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n")
        elif b"INFO" in data.upper():
            conn.sendall(b"$314572800\r\n")
            chunk = b"used_memory:1\r\n" * 65536
            for _ in range(314572800 // len(chunk) + 1):
                conn.sendall(chunk)
        else:
            conn.sendall(b"+OK\r\n")


def hello_as_string_redis(conn: socket.socket) -> None:
    """Answer every command, HELLO included, with a bulk string."""
    while conn.recv(65536):
        conn.sendall(b"$5\r\nhello\r\n")


@pytest.fixture
def exposition_400k() -> Iterator[str]:
    """An app's /metrics with 400 000 route series of the request counter (about 24 MB, under the 32 MiB cap)."""
    body = b"# TYPE http_requests_total counter\n" + b"".join(
        b'http_requests_total{route="/orders/%d",status="200"} 3\n' % i for i in range(400_000))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()
    server.server_close()


def run_check(tmp_path: Path, checks: dict[str, Any]) -> tuple[dict[str, Any], int, str]:
    """``opsagent check --json`` in its own process: (the one row, peak RSS KiB, stderr)."""
    config = tmp_path / "opsagent.yaml"
    config.write_text(yaml.safe_dump({"checks": {"cpu": None, "memory": None, **checks}}))
    proc = subprocess.run([sys.executable, "-c", _MEASURED_CLI, "check", "--config", str(config), "--json"],
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 1, proc.stderr[-2000:]
    [row] = json.loads(proc.stdout)
    rss = int(proc.stderr.strip().splitlines()[-1].split()[1])
    return row, rss, proc.stderr


def assert_down_with(row: dict[str, Any], rss: int, stderr: str, words: str) -> None:
    assert row["up"] is False and row["alert"] == "TargetDown", row
    assert words in (row["error"] or ""), row["error"]
    assert rss < RSS_CEILING_KIB, f"peak RSS {rss / 1024:.0f} MiB"
    assert "check_crashed" not in stderr and "Traceback" not in stderr


def test_a_postgres_endpoint_streaming_rows_without_end_is_down_and_memory_stays_flat(tmp_path: Path) -> None:
    """An endpoint answering the connections query with endless rows is down ("more than 1 rows") and the agent stays under 256 MiB."""
    server = FakeServer(endless_rows_postgres)
    try:
        row, rss, stderr = run_check(tmp_path, {"postgres": [
            {"name": "liar", "dsn": f"postgresql://postgres@127.0.0.1:{server.port}/postgres", "timeout": "5s"}]})
    finally:
        server.close()
    assert_down_with(row, rss, stderr, "more than 1 rows")


def test_a_sql_check_against_endless_rows_is_down_and_memory_stays_flat(tmp_path: Path) -> None:
    """A sql target whose server streams rows without end is a clear error naming the target, under 256 MiB."""
    server = FakeServer(endless_rows_postgres)
    try:
        row, rss, stderr = run_check(tmp_path, {"sql": [
            {"name": "liar", "dsn": f"postgresql://postgres@127.0.0.1:{server.port}/postgres",
             "query": "SELECT 1", "threshold": 1, "timeout": "5s"}]})
    finally:
        server.close()
    assert_down_with(row, rss, stderr, "'liar'")
    assert "rows" in row["error"]


def test_a_300_mb_info_reply_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A Redis endpoint answering INFO with 300 MB is down with the reply-size reason and the agent stays under 256 MiB."""
    server = FakeServer(huge_info_redis)
    try:
        row, rss, stderr = run_check(tmp_path, {"redis": [
            {"name": "liar", "url": f"redis://127.0.0.1:{server.port}/0", "timeout": "5s"}]})
    finally:
        server.close()
    assert_down_with(row, rss, stderr, "byte cap")


def test_hello_answered_with_a_string_is_a_target_error_not_an_agent_bug(tmp_path: Path) -> None:
    """A Redis endpoint answering HELLO with a bulk string is TargetDown logged as check_failed, never check_crashed."""
    server = FakeServer(hello_as_string_redis)
    try:
        row, rss, stderr = run_check(tmp_path, {"redis": [
            {"name": "liar", "url": f"redis://127.0.0.1:{server.port}/0", "timeout": "3s"}]})
    finally:
        server.close()
    assert_down_with(row, rss, stderr, "is this a Redis server?")
    assert "check_failed" in stderr


def test_a_400k_route_exposition_is_a_clear_error_within_the_memory_ceiling(tmp_path: Path, exposition_400k: str) -> None:
    """An app exposing 400 000 route series is down with the series-cap reason and the agent stays under 256 MiB."""
    row, rss, stderr = run_check(tmp_path, {"error_rate": [
        {"name": "api", "metrics_url": exposition_400k, "window": "5m", "timeout": "30s", "interval": "60s"}]})
    assert_down_with(row, rss, stderr, "more than 20000 series")
