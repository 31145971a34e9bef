"""The HTTP surface: metrics, health, readiness, status JSON and page, and refusals."""

from __future__ import annotations

import gzip
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from opsagent_testing.servers import HangingServer, PostgresServer, closed_port
from tests.fixtures.agent import RunningAgent, poll

Start = Callable[..., RunningAgent]


def test_metrics_pass_promtool_and_carry_the_spec_names(start_agent: Start) -> None:
    """A real scrape passes `promtool check metrics` and holds the SPEC §6 series."""
    a = start_agent({"checks": {"redis": [{"name": "gone", "url": f"redis://127.0.0.1:{closed_port()}/0", "interval": "1s"}]}})
    poll(lambda: a.get("/readyz").status_code == 200)
    body = a.get("/metrics").text
    for name in ('opsagent_check_value{check="memory",target="task"}', 'opsagent_check_up{check="redis",target="gone"} 0.0',
                 'opsagent_check_up{check="cpu",target="task"} 1.0', "opsagent_check_duration_seconds_bucket",
                 'opsagent_build_info{version="', "opsagent_memory_used_bytes"):
        assert name in body, name
    proc = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stdout + proc.stderr


def test_metrics_gzip_when_asked(start_agent: Start) -> None:
    """A scraper that accepts gzip gets a gzip body with the same exposition."""
    a = start_agent({})
    poll(lambda: a.get("/readyz").status_code == 200)
    raw = requests.get(a.url + "/metrics", headers={"Accept-Encoding": "gzip"}, timeout=10, stream=True).raw.read()
    assert gzip.decompress(raw).startswith(b"# HELP")


def test_status_json_and_page_show_values_thresholds_errors_and_runbooks(start_agent: Start) -> None:
    """/status has value, threshold, state and error per check; / shows the same with runbook links."""
    port = closed_port()
    a = start_agent({"checks": {"postgres": [{"name": "main", "dsn": f"postgresql://app:pw-s3cr3t@127.0.0.1:{port}/app",
                                              "interval": "1s"}]}})
    poll(lambda: a.get("/readyz").status_code == 200)
    status = a.status()
    mem = a.check_row("memory", "task")
    assert mem is not None and mem["up"] is True and mem["threshold"] == 0.9 and mem["alert"] == "HighMemory"
    assert 0 < mem["value"] < 1
    pg = a.check_row("postgres", "main")
    assert pg is not None and pg["up"] is False and pg["error"]
    assert "pw-s3cr3t" not in a.get("/status").text
    assert status["agent"]["ready"] is True
    page = a.get("/").text
    assert "HighMemory.md" in page and "postgres" in page and "pw-s3cr3t" not in page


def test_readyz_waits_for_the_first_round(start_agent: Start, hanging_server: HangingServer) -> None:
    """/readyz answers 503 while a target's first run is still within its deadline, then 200."""
    a = start_agent({"checks": {"redis": [{"name": "hung", "url": f"redis://127.0.0.1:{hanging_server.port}/0",
                                           "interval": "10s", "timeout": "3s"}]}})
    assert a.get("/readyz").status_code == 503
    poll(lambda: a.get("/readyz").status_code == 200, timeout=10)
    row = a.check_row("redis", "hung")
    assert row is not None and row["up"] is False


def test_healthz_fails_when_the_scheduler_is_dead(start_agent: Start) -> None:
    """/healthz turns 503 with a reason once the scheduler stops."""
    a = start_agent({})
    assert a.get("/healthz").status_code == 200
    a.agent.scheduler.shutdown(wait=False)
    r = a.get("/healthz")
    assert r.status_code == 503 and "scheduler" in r.text


def test_unknown_paths_404_and_wrong_methods_405(start_agent: Start) -> None:
    """Unknown paths get 404, known paths with the wrong method 405 with Allow."""
    a = start_agent({})
    assert a.get("/nope").status_code == 404
    assert a.get("/../../etc/passwd").status_code == 404
    assert a.get("/runbooks/..%2f..%2fetc%2fpasswd").status_code == 404
    r = requests.post(a.url + "/metrics", data=b"x", timeout=10)
    assert r.status_code == 405 and "GET" in r.headers["Allow"]
    r = requests.delete(a.url + "/status", timeout=10)
    assert r.status_code == 405
    assert requests.get(a.url + "/backup", timeout=10).status_code == 405


def test_post_backup_needs_a_configured_token(start_agent: Start) -> None:
    """POST /backup is 404 without admin_token, 401 with a wrong or missing bearer."""
    a = start_agent({})
    assert requests.post(a.url + "/backup", timeout=10).status_code == 404
    b = start_agent({"agent": {"admin_token": "adm-tok-123456"}})
    assert requests.post(b.url + "/backup", timeout=10).status_code == 401
    r = requests.post(b.url + "/backup", headers={"Authorization": "Bearer wrong"}, timeout=10)
    assert r.status_code == 401 and "adm-tok-123456" not in r.text
    r = requests.post(b.url + "/backup", headers={"Authorization": "Bearer adm-tok-123456"}, timeout=10)
    assert r.status_code == 409  # authorised, but no backups configured


def test_oversized_body_is_refused(start_agent: Start) -> None:
    """A POST body over the limit gets 413 and the server keeps serving."""
    a = start_agent({"agent": {"admin_token": "adm-tok-123456"}})
    r = requests.post(a.url + "/backup", data=b"x" * (200 * 1024), timeout=10,
                      headers={"Authorization": "Bearer adm-tok-123456"})
    assert r.status_code == 413
    assert a.get("/metrics").status_code == 200


def test_a_slow_client_does_not_block_metrics(start_agent: Start) -> None:
    """A client that sends half a request and stalls does not delay other scrapers."""
    a = start_agent({})
    host, port = a.settings.agent.listen.split(":")
    stalled = [socket.create_connection((host, int(port)), timeout=5) for _ in range(20)]
    for s in stalled:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finishes the headers
    try:
        assert a.get("/metrics").status_code == 200
    finally:
        for s in stalled:
            s.close()


def test_status_page_shows_backups_rpo_and_rto(start_agent: Start, private_pg: PostgresServer, tmp_path: Path) -> None:
    """After a backup and a drill the page shows the newest backup, its replica copy, RPO and RTO against targets."""
    dsn = private_pg.dsn()
    a = start_agent({
        "checks": {"postgres": [{"name": "main", "dsn": dsn, "interval": "5s"}]},
        "backup": {"repository": f"file://{tmp_path}/primary", "replica": f"file://{tmp_path}/replica",
                   "postgres": ["main"], "drill_dsn": dsn, "drill_on_target_server": True},
    })
    assert a.agent.backup.trigger_backup()
    status = poll(lambda: (s := a.status())["backups"]["last_run"] and s, timeout=60)
    backup_id = status["backups"]["targets"][0]["newest_backup"]["id"]
    assert status["backups"]["targets"][0]["newest_replica"]["id"] == backup_id
    page = a.get("/")
    assert page.status_code == 200
    assert backup_id in page.text and "RPO" in page.text and "RTO" in page.text and "no drill yet" in page.text


@pytest.mark.parametrize("head", [b"GET /metrics HTTP/1.1", b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: "],
                         ids=["in the request line", "in the headers"])
def test_a_client_trickling_header_bytes_is_cut_off(start_agent: Start, monkeypatch: pytest.MonkeyPatch,
                                                    head: bytes) -> None:
    """A slowloris client that keeps sending a byte at a time, in the request line or the headers, is disconnected at the header deadline."""
    import time

    from opsagent.web.server import Handler

    monkeypatch.setattr(Handler, "header_deadline", 1.0)
    a = start_agent({})
    host, port = a.settings.agent.listen.split(":")
    s = socket.create_connection((host, int(port)), timeout=5)
    s.sendall(head)
    started = time.monotonic()
    cut = False
    try:
        while time.monotonic() - started < 5:
            s.sendall(b"X")  # never a complete line
            time.sleep(0.2)
    except OSError:
        cut = True
    finally:
        s.close()
    assert cut and time.monotonic() - started < 4
    assert a.get("/metrics").status_code == 200


def test_a_flood_of_silent_connections_is_capped_and_metrics_still_answer(start_agent: Start,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the connection limit the oldest client still sending its request head is cut off: threads stay bounded, /metrics answers."""
    import threading

    from opsagent.web.server import _Server

    monkeypatch.setattr(_Server, "max_connections", 8)
    a = start_agent({})
    host, port = a.settings.agent.listen.split(":")
    socks = []
    try:
        for _ in range(40):
            s = socket.create_connection((host, int(port)), timeout=5)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
            socks.append(s)
        assert a.get("/metrics").status_code == 200
        handlers = [t for t in threading.enumerate() if "process_request_thread" in t.name]
        assert len(handlers) <= 8 + 2, len(handlers)
        assert socks[0].recv(100) == b""  # the oldest silent client was cut off to make room
    finally:
        for s in socks:
            s.close()
    assert a.get("/metrics").status_code == 200


def test_status_has_delivery_per_sink_and_alert_history(start_agent: Start) -> None:
    """/status carries `notify` (per sink: queued, sent, failed, last error) and `history` (the transitions that were paged)."""
    a = start_agent({"checks": {"redis": [{"name": "gone", "url": f"redis://127.0.0.1:{closed_port()}/0", "interval": "1s"}]},
                     "alerts": {"TargetDown": {"for": "0s"}},
                     "notify": {"alertmanager_url": f"http://127.0.0.1:{closed_port()}", "timeout": "1s"}})
    status = poll(lambda: (s := a.status())["history"] and s["notify"][0]["failed"] and s)
    sink = status["notify"][0]
    assert sink["sink"] == "alertmanager" and sink["sent"] == 0 and sink["last_error"]
    event = status["history"][0]
    assert (event["kind"], event["alertname"], event["target"]) == ("fired", "TargetDown", "gone")
    row = a.check_row("redis", "gone")
    assert row is not None and row["up"] is False and row["last_ok_at"] is None
    mem = a.check_row("memory", "task")
    assert mem is not None and mem["last_ok_at"] is not None
    page = a.get("/").text
    assert "alertmanager" in page and "TargetDown" in page and "failing" in page


def test_accepted_sockets_disable_nagle(start_agent: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every accepted connection has TCP_NODELAY set, so keep-alive scrapers do not wait for delayed ACKs."""
    from opsagent.web.server import Handler

    seen: list[int] = []
    setup = Handler.setup

    def recording_setup(self: Handler) -> None:
        setup(self)
        seen.append(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(Handler, "setup", recording_setup)
    a = start_agent({})
    with requests.Session() as session:
        for _ in range(3):
            assert session.get(a.url + "/healthz", timeout=5).status_code == 200
    assert seen and all(seen), seen
