"""The ``http`` kind against private HTTP(S) servers: status, body, latency, TLS expiry, and failures worded for the page."""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from opsagent.alerts.verdict import verdict
from opsagent.checks.http import HttpCheck
from opsagent.config import HttpTarget, Settings
from opsagent.runtime.results import CheckResult
from opsagent.runtime.runner import TargetRunner
from opsagent_testing.servers import HangingServer, closed_port
from tests.fixtures.tls import HttpsServer, answer, make_ca_and_cert

DAY = 86400.0


def dribble(h: BaseHTTPRequestHandler) -> None:
    """Headers at once, then one body byte every 0.3 s for a minute."""
    h.send_response(200)
    h.send_header("Content-Length", "200")
    h.end_headers()
    for _ in range(200):
        try:
            h.wfile.write(b"x")
            h.wfile.flush()
        except OSError:  # the probe gave up, as it should
            return
        time.sleep(0.3)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HttpsServer, Path]]:
    ca, cert, key = make_ca_and_cert(tmp_path_factory.mktemp("tls"), dt.timedelta(days=5))
    server = HttpsServer({
        "/health": answer(200, b'{"status": "ok", "db": "up"}', "application/json"),
        "/broken": answer(503, b"maintenance"),
        "/slow-body": dribble,
    }, cert=(cert, key))
    yield server, ca
    server.close()


def probe(url: str, **kw: object) -> dict[str, object]:
    target = HttpTarget.model_validate({"name": "api", "url": url, **kw})
    return dict(HttpCheck(target).measure().details)


def judged(settings: Settings, details: dict[str, object]) -> tuple[str | None, str]:
    v = verdict(settings, CheckResult("http", "api", True, 0.01, at=0.0, duration=0.01, details=details))
    return v.alert, v.state


def test_healthy_https_endpoint_reports_status_latency_and_certificate_expiry(tls: tuple[HttpsServer, Path]) -> None:
    """A verified HTTPS answer with the expected status and text passes and reports seconds until the certificate expires."""
    server, ca = tls
    target = HttpTarget(name="api", url=server.url + "/health", body_contains='"status": "ok"', ca_file=str(ca))
    reading = HttpCheck(target).measure()
    assert reading.details["probe_failed"] == 0 and reading.details["status"] == 200
    assert 4.9 * DAY < reading.details["tls_expiry_seconds"] < 5 * DAY
    assert 0 < reading.value < 2
    gauges = {g.name: g.value for g in reading.gauges}
    assert gauges["opsagent_tls_certificate_expiry_seconds"] == reading.details["tls_expiry_seconds"]


def test_certificate_expiring_within_tls_warn_breaches_and_a_shorter_tls_warn_does_not(tls: tuple[HttpsServer, Path]) -> None:
    """Five days left breaches the default 14-day tls_warn; a target with tls_warn: 3d stays ok."""
    server, ca = tls
    details = probe(server.url + "/health", ca_file=str(ca))
    default = Settings(checks={"http": [{"name": "api", "url": server.url + "/health"}]})
    relaxed = Settings(checks={"http": [{"name": "api", "url": server.url + "/health", "tls_warn": "3d"}]})
    assert judged(default, details) == ("TLSCertificateExpiring", "breached")
    assert judged(relaxed, details)[1] == "ok"


@pytest.mark.parametrize(("path", "kw", "reason"), [
    ("/health", {}, "not trusted"),  # the private CA is not in the system bundle
    ("/broken", {"ca": True}, "status 503"),
    ("/health", {"ca": True, "body_contains": "maintenance"}, "does not contain 'maintenance'"),
    ("/health", {"ca": True, "expect_status": 204}, "expected 204"),
])
def test_failed_probes_say_why_and_breach_http_probe_failed(tls: tuple[HttpsServer, Path], path: str,
                                                           kw: dict[str, object], reason: str) -> None:
    """An untrusted certificate, a wrong status, a missing text or an unexpected status fails the probe with the reason."""
    server, ca = tls
    options = {k: v for k, v in kw.items() if k != "ca"} | ({"ca_file": str(ca)} if kw.get("ca") else {})
    details = probe(server.url + path, **options)
    assert details["probe_failed"] == 1 and reason in str(details["error"])
    assert judged(Settings(), details) == ("HTTPProbeFailed", "breached")


def test_refused_hanging_garbage_and_dribbling_servers_fail_within_the_deadline(tls: tuple[HttpsServer, Path]) -> None:
    """Refused, silent, garbage-speaking and byte-dribbling servers each fail the probe with a reason inside the deadline, beside a healthy probe."""
    server, ca = tls
    hanging = HangingServer()
    garbage = socket.socket()
    garbage.bind(("127.0.0.1", 0))
    garbage.listen(8)

    def spew() -> None:
        while True:
            try:
                conn, _ = garbage.accept()
            except OSError:
                return
            conn.sendall(b"\x00\xffNOT HTTP AT ALL\r\n\r\n")
            conn.close()

    threading.Thread(target=spew, daemon=True).start()
    cases = {
        "refused": (f"http://127.0.0.1:{closed_port()}/", "refused"),
        "hanging": (f"http://127.0.0.1:{hanging.port}/", "timed out"),
        "garbage": (f"http://127.0.0.1:{garbage.getsockname()[1]}/", "BadStatusLine"),
        "dribble": (server.url + "/slow-body", "did not arrive"),
    }
    try:
        runners = {name: TargetRunner("http", name, lambda u=url: HttpCheck(HttpTarget(
            name="x", url=u, timeout="2s", ca_file=str(ca), body_contains="never")), deadline=2.0)
            for name, (url, _) in cases.items()}
        healthy = TargetRunner("http", "ok", lambda: HttpCheck(HttpTarget(name="ok", url=server.url + "/health",
                                                                          ca_file=str(ca))), deadline=2.0)
        results: dict[str, CheckResult] = {}
        threads = [threading.Thread(target=lambda n=n, r=r: results.__setitem__(n, r.run())) for n, r in runners.items()]
        for t in threads:
            t.start()
        good = healthy.run()
        for t in threads:
            t.join(5)
        assert good.up and good.details["probe_failed"] == 0
        for name, (_, reason) in cases.items():
            result = results[name]
            assert result.duration < 2.0, name
            assert result.up and result.details["probe_failed"] == 1, (name, result.error)
            assert reason.lower() in str(result.details["error"]).lower(), (name, result.details["error"])
    finally:
        hanging.close()
        garbage.close()
