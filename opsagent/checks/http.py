"""A synthetic HTTP probe: status, optional body text, latency and the TLS certificate's expiry.

What Gatus, Uptime Kuma and blackbox_exporter do for a status page, for one
URL. A probe that fails (wrong status, missing text, refused, TLS not
verified, too slow) is still a reading: ``details["probe_failed"] = 1`` with the
reason, so ``HTTPProbeFailed`` pages with the words of the failure rather than
a bare ``TargetDown``. Certificates are always verified; ``ca_file`` adds a
private CA to the system's. The whole request, body included, runs against
one budget (a dribbling server cannot stretch it) and at most ``BODY_CAP``
bytes of the body are read. Redirects are not followed: the status compared is
the first answer's.
"""

from __future__ import annotations

import http.client
import ssl
import time
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

from opsagent.checks.base import CheckError, Gauge, Reading, SimpleCheck
from opsagent.config import HttpTarget

BODY_CAP = 1 << 20  # bytes of the body searched for body_contains
USER_AGENT = "opsagent-probe"


class _ProbeFailed(Exception):
    """Why the probe failed, in words for the page."""


def certificate_context(ca_file: str | None) -> ssl.SSLContext:
    """System CAs plus ``ca_file``; hostname and chain verified."""
    context = ssl.create_default_context()
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise CheckError(f"cannot read ca_file {ca_file!r}: {exc}") from None
    return context


def expiry_seconds(cert: Mapping[str, Any] | None, now: float) -> float | None:
    """Seconds until the peer certificate's notAfter (negative once expired); None without a certificate."""
    not_after = (cert or {}).get("notAfter")
    return ssl.cert_time_to_seconds(not_after) - now if isinstance(not_after, str) else None


class HttpCheck(SimpleCheck):
    """GET one URL within the deadline and judge the answer against the target's expectations."""

    kind: ClassVar[str] = "http"

    def __init__(self, target: HttpTarget) -> None:
        self.target = target
        parts = urlsplit(target.url)
        self._https = parts.scheme.lower() == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._context = certificate_context(target.ca_file) if self._https else None
        self._budget = max(0.5, target.deadline * 0.8)  # leave the runner time to record the failure itself
        self._needle = target.body_contains.encode() if target.body_contains else None
        self._headers = {"User-Agent": USER_AGENT, "Accept": "*/*", "Connection": "close"}

    def _connection(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self._budget, context=self._context)
        return http.client.HTTPConnection(self._host, self._port, timeout=self._budget)

    def _read_body(self, response: http.client.HTTPResponse, sock: Any, deadline: float) -> bytes:
        """Up to BODY_CAP bytes, stopping at the needle, EOF or the deadline."""
        body = bytearray()
        while len(body) < BODY_CAP:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _ProbeFailed(f"the body did not arrive within {self._budget:g}s")
            if sock is not None:
                sock.settimeout(remaining)
            try:
                chunk = response.read1(min(65536, BODY_CAP - len(body)))
            except TimeoutError:
                raise _ProbeFailed(f"the body did not arrive within {self._budget:g}s") from None
            if not chunk:
                break
            body += chunk
            if self._needle is not None and self._needle in body:
                break
        return bytes(body)

    def _probe(self, details: dict[str, Any]) -> None:
        started = time.monotonic()
        deadline = started + self._budget
        conn = self._connection()
        try:
            try:
                conn.connect()
                sock = conn.sock
                if isinstance(sock, ssl.SSLSocket):
                    left = expiry_seconds(sock.getpeercert(), time.time())
                    if left is not None:
                        details["tls_expiry_seconds"] = round(left, 3)
                conn.request("GET", self._path, headers=self._headers)
                response = conn.getresponse()
                details["status"] = response.status
                body = self._read_body(response, sock, deadline) if self._needle is not None else b""
            except ssl.SSLCertVerificationError as exc:
                raise _ProbeFailed(f"TLS certificate not trusted: {exc.verify_message or exc}") from None
            except TimeoutError:
                raise _ProbeFailed(f"no answer within {self._budget:g}s (timed out)") from None
            except (OSError, http.client.HTTPException) as exc:
                raise _ProbeFailed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
        finally:
            details["response_seconds"] = round(time.monotonic() - started, 6)
            conn.close()
        if response.status != self.target.expect_status:
            raise _ProbeFailed(f"status {response.status} {response.reason}, expected {self.target.expect_status}")
        if self._needle is not None and self._needle not in body:
            raise _ProbeFailed(f"the body does not contain {self.target.body_contains!r}"
                               + (f" (first {BODY_CAP} bytes searched)" if len(body) >= BODY_CAP else ""))

    def measure(self) -> Reading:
        details: dict[str, Any] = {"expect_status": self.target.expect_status}
        try:
            self._probe(details)
            details["probe_failed"] = 0
        except _ProbeFailed as failed:
            details["probe_failed"] = 1
            details["error"] = str(failed)[:300]
        gauges = [Gauge("opsagent_http_response_seconds", details["response_seconds"],
                        help="time to the answer of the probe (and its body when body_contains is set)")]
        if "status" in details:
            gauges.append(Gauge("opsagent_http_status_code", float(details["status"]), help="status of the last answer"))
        if "tls_expiry_seconds" in details:
            gauges.append(Gauge("opsagent_tls_certificate_expiry_seconds", details["tls_expiry_seconds"],
                                help="seconds until the served TLS certificate expires", check_label=False))
        gauges.append(Gauge("opsagent_http_probe_success", 1.0 - details["probe_failed"],
                            help="1 when the last probe met its expectations"))
        return Reading(value=details["response_seconds"], details=details, gauges=tuple(gauges),
                       source="https" if self._https else "http")
