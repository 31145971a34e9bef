"""The route table: which path answers which method, and what it answers.

Routing is data (a list of :class:`Route`), so 404 and 405-with-Allow come from
one place and the server needs no knowledge of paths. Routes that change
something (POST) are marked ``admin``: the server asks :meth:`App.admit` about
the bearer token *before* it reads any request body, so an unauthenticated
client never gets to hold a connection open by trickling one.
Handlers only read the :class:`~opsagent.web.ports.AgentView`; nothing here measures.
"""

from __future__ import annotations

import hmac
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from opsagent.web.page import status_html
from opsagent.web.ports import AgentView
from opsagent.web.status import status_json

TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
JSON = "application/json"
_RUNBOOK = re.compile(r"^/runbooks/([A-Za-z0-9]+)(\.md)?$")


@dataclass(frozen=True)
class Request:
    """What a handler may read of a request (the body only on routes that take one)."""

    method: str
    path: str
    headers: Mapping[str, str]  # names in lower case
    match: re.Match[str] | None = None


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def text(cls, status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
        return cls(status, (text + "\n").encode(), TEXT, headers)

    @classmethod
    def json(cls, status: int, doc: Any) -> Response:
        return cls(status, json.dumps(doc).encode(), JSON)


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    methods: tuple[str, ...]
    pattern: re.Pattern[str]
    handler: Handler
    admin: bool = False  # needs ``Authorization: Bearer <admin_token>``; 404 when no token is configured

    @property
    def allow(self) -> str:
        return ", ".join(self.methods)


class _Rendered:
    """One rendering shared by every request within ``ttl`` seconds, rendered by one thread at a time.

    A flood of clients pipelining requests for the page would otherwise make every handler thread render
    it, starving /healthz of CPU; a quarter-second-old page is as true as a fresh one to a person.
    """

    def __init__(self, ttl: float, render: Callable[[], bytes]) -> None:
        self._ttl = ttl
        self._render = render
        self._lock = threading.Lock()
        self._body: bytes | None = None
        self._at = 0.0

    def get(self) -> bytes:
        with self._lock:
            now = time.monotonic()
            if self._body is None or now - self._at >= self._ttl:
                self._body = self._render()
                self._at = now
            return self._body


def _exact(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(path) + "$")


class App:
    """Routes over one view of the agent. ``clock`` gives the page its "now" (tests pass their own)."""

    render_cache_seconds = 0.25  # how long /status and / may be reused under load

    def __init__(self, view: AgentView, clock: Callable[[], float] = time.time) -> None:
        self.view = view
        self.clock = clock
        self._status_body = _Rendered(self.render_cache_seconds, lambda: status_json(self.view, self.clock()))
        self._page_body = _Rendered(self.render_cache_seconds, lambda: status_html(self.view, self.clock()))
        settings = view.page_settings()
        self._token = settings.admin_token
        get = ("GET", "HEAD")
        self.routes = [
            Route(get, _exact("/metrics"), self._metrics),
            Route(get, _exact("/healthz"), self._healthz),
            Route(get, _exact("/readyz"), self._readyz),
            Route(get, _exact("/status"), self._status),
            Route(get, _exact("/"), self._page),
            Route(get, _RUNBOOK, self._runbook),
            Route(("POST",), _exact("/backup"), self._backup, admin=True),
        ]

    def resolve(self, method: str, path: str) -> tuple[Route, re.Match[str]] | Response:
        """The route for ``method path``, or the 404/405 that answers it."""
        for route in self.routes:
            match = route.pattern.match(path)
            if match is None:
                continue
            if method not in route.methods:
                return Response.text(405, f"method {method} not allowed on {path[:200]}; allowed: {route.allow}",
                                     (("Allow", route.allow),))
            return route, match
        return Response.text(404, f"no such path: {path[:200]}; try /, /status, /metrics, /healthz, /readyz")

    def admit(self, route: Route, headers: Mapping[str, str]) -> Response | None:
        """None if the request may proceed; else the refusal (checked before any body is read)."""
        if not route.admin:
            return None
        if self._token is None:
            return Response.text(404, "POST endpoints are disabled: no agent.admin_token is configured")
        given = headers.get("authorization") or ""
        if not hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode()):
            return Response.text(401, "missing or wrong bearer token", (("WWW-Authenticate", 'Bearer realm="opsagent"'),))
        return None

    # -- handlers ------------------------------------------------------------------------------

    def _metrics(self, request: Request) -> Response:
        gzip_ok = "gzip" in (request.headers.get("accept-encoding") or "")
        out = self.view.metrics(request.headers.get("accept") or "", gzip_ok)
        return Response(200, out.body, out.content_type, (("Content-Encoding", "gzip"),) if out.gzipped else ())

    def _healthz(self, request: Request) -> Response:
        health = self.view.health()
        return Response.text(200 if health.healthy else 503, health.reason)

    def _readyz(self, request: Request) -> Response:
        ready = self.view.health().ready
        return Response.text(200 if ready else 503, "ready" if ready else "first round of checks still running")

    def _status(self, request: Request) -> Response:
        return Response(200, self._status_body.get(), JSON)

    def _page(self, request: Request) -> Response:
        return Response(200, self._page_body.get(), HTML)

    def _runbook(self, request: Request) -> Response:
        from opsagent.runbooks import read_runbook
        from opsagent.web.runbook_page import runbook_html

        assert request.match is not None
        name = request.match.group(1)
        try:
            text = read_runbook(name)
        except KeyError:
            return Response.text(404, f"no runbook named {name}")
        if request.match.group(2):
            return Response(200, text.encode(), "text/markdown; charset=utf-8")
        return Response(200, runbook_html(name, text), HTML)

    def _backup(self, request: Request) -> Response:
        outcome = self.view.trigger_backup()
        if outcome == "unconfigured":
            return Response.text(409, "no backups are configured (backup.repository, rds_instances or elasticache_clusters)")
        if outcome == "busy":
            return Response.json(409, {"started": False, "reason": "a backup run is already in progress"})
        return Response.json(202, {"started": True})
