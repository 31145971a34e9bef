"""What every sink shares: the protocol, the error that says whether to retry, a bounded HTTP POST."""

from __future__ import annotations

import email.utils
import http.client
import io
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any, Protocol

from opsagent import __version__, secrets
from opsagent.notify.message import Delivery


class DeliveryError(Exception):
    """A sink refused or could not take a message.

    ``permanent``: retrying cannot help (e.g. HTTP 400). ``retry_after``: the sink said when to retry
    (429 ``Retry-After``, already capped); the worker waits at least that long.
    """

    def __init__(self, sink: str, reason: str, *, permanent: bool = False, retry_after: float | None = None) -> None:
        super().__init__(f"{sink}: {secrets.scrub(reason)}")
        self.sink = sink
        self.reason = secrets.scrub(reason)
        self.permanent = permanent
        self.retry_after = retry_after


class Sink(Protocol):
    """Delivers one outbox entry (:class:`~opsagent.notify.message.Delivery`); raises on failure.

    Capabilities live on the sink, as Alertmanager's notifiers carry ``send_resolved``:
    ``repeats`` sinks get every still-firing alert (and the ``Watchdog`` heartbeat) re-sent each
    ``notify.repeat_interval`` because they forget alerts that are not refreshed; ``sends_resolved``
    sinks are told when an alert resolves.
    """

    name: str
    repeats: bool
    sends_resolved: bool

    def send(self, delivery: Delivery, now: float) -> None: ...


# A 429's Retry-After is honoured up to this many seconds (a hostile or confused sink cannot park the queue for days).
RETRY_AFTER_CAP = 300.0
# 307/308 (which keep the method and body) are followed this many times; 301/302/303 never are.
MAX_REDIRECTS = 3


class _DeadlineSocket:
    """A connected socket whose every read gets only what is left of one whole-request deadline.

    ``timeout`` on a socket bounds each operation, so a server dribbling one byte every few seconds
    would hold a request (and its sink's queue) forever; here the request as a whole has ``timeout``.
    """

    def __init__(self, sock: Any, deadline: float) -> None:
        self._sock: socket.socket = sock
        self._deadline = deadline
        self._files = 0  # open makefile() readers: the socket closes only after the last one (as socket.socket does)
        self._close_pending = False

    def _arm(self) -> None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the sink did not answer within the whole-request deadline")
        self._sock.settimeout(remaining)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self._arm()
        return self._sock.recv_into(buffer, nbytes, flags)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._arm()
        return self._sock.recv(bufsize, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._arm()
        self._sock.sendall(data, flags)

    def makefile(self, mode: str = "r", buffering: int | None = None, **_: Any) -> Any:
        raw = socket.SocketIO(self, "rb" if "r" in mode else "wb")  # type: ignore[arg-type]  # duck-typed socket
        self._files += 1
        return io.BufferedReader(raw) if "r" in mode else io.BufferedWriter(raw)

    def _decref_socketios(self) -> None:  # socket.SocketIO calls this on close
        self._files -= 1
        if self._close_pending and self._files <= 0:
            self._sock.close()

    def close(self) -> None:
        if self._files > 0:
            self._close_pending = True  # http.client closes the connection while the response is still read
        else:
            self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _deadline_connection(base: type[http.client.HTTPConnection], deadline: float) -> Any:
    class Connection(base):  # type: ignore[valid-type,misc]  # a subclass of whichever class urllib picks
        def connect(self) -> None:
            super().connect()
            connected: Any = self.sock  # type: ignore[has-type]  # base is whichever class urllib picks
            self.sock = _DeadlineSocket(connected, deadline)

    return Connection


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect silently: urllib would turn a 301/302/303 POST into a body-less GET."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _DeadlineHTTP(urllib.request.HTTPHandler):
    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_deadline_connection(http.client.HTTPConnection, self.deadline), req)


class _DeadlineHTTPS(urllib.request.HTTPSHandler):
    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline

    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_deadline_connection(http.client.HTTPSConnection, self.deadline), req,
                            context=self._context)  # type: ignore[attr-defined]  # HTTPSHandler's own context


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), capped; None if absent or bad."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(RETRY_AFTER_CAP, seconds))


def post_json(sink: str, url: str, body: Any, timeout: float, headers: Mapping[str, str] | None = None) -> bytes:
    """POST ``body`` as JSON within one whole-request deadline of ``timeout`` seconds.

    Raises :class:`DeliveryError`: permanent for 4xx other than 408/429; retryable for 5xx, 408,
    429 (with the sink's ``Retry-After``), network errors, the deadline, and every redirect that
    would lose the body (301/302/303: the configured URL needs fixing, and it stays visible as a
    failure); 307/308 are re-POSTed to their ``Location`` a few times.
    """
    data = json.dumps(body).encode()
    deadline = time.monotonic() + timeout
    target = url
    for _hop in range(MAX_REDIRECTS + 1):
        request = urllib.request.Request(target, data=data, method="POST", headers={
            "Content-Type": "application/json",
            "User-Agent": f"opsagent/{__version__}",
            **(headers or {}),
        })
        opener = urllib.request.build_opener(_NoRedirect, _DeadlineHTTP(deadline), _DeadlineHTTPS(deadline))
        try:
            with opener.open(request, timeout=max(0.001, deadline - time.monotonic())) as response:
                return bytes(response.read(65536))
        except urllib.error.HTTPError as exc:
            location = exc.headers.get("Location") if exc.headers is not None else None
            if exc.code in (307, 308) and location:
                target = urllib.parse.urljoin(target, location)
                exc.close()
                continue
            raise _http_failure(sink, exc, location) from None
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise DeliveryError(sink, f"{type(exc).__name__}: {reason}") from None
    raise DeliveryError(sink, f"more than {MAX_REDIRECTS} redirects; fix the configured URL")


def _http_failure(sink: str, exc: urllib.error.HTTPError, location: str | None) -> DeliveryError:
    try:
        detail = exc.read(500).decode("utf-8", "replace") if exc.fp is not None else ""
    except (OSError, TimeoutError, http.client.HTTPException):
        detail = ""
    finally:
        exc.close()
    if 300 <= exc.code < 400:
        where = urllib.parse.urlsplit(urllib.parse.urljoin(exc.url or "", location or ""))
        return DeliveryError(sink, f"HTTP {exc.code} redirect to {where.scheme}://{where.netloc}/…: not followed, a "
                                   "redirected POST loses its body; set the sink URL to the final address")
    permanent = 400 <= exc.code < 500 and exc.code not in (408, 429)
    wait = retry_after(exc.headers.get("Retry-After")) if exc.code in (429, 503) and exc.headers else None
    return DeliveryError(sink, f"HTTP {exc.code}: {' '.join(detail.split())[:300]}", permanent=permanent,
                         retry_after=wait)
