"""``opsagent silence --target NAME --for 2h [--comment ...]``: hold a target's pages for a while.

Two effects, so a silence works whether or not Alertmanager is in the path:
the agent's own silence store (``state_dir/silences.json``, which the daemon
re-reads) holds its pages, and, when ``notify.alertmanager_url`` is set, an
Alertmanager silence (``POST /api/v2/silences``) matching the same ``target``
and ``agent`` labels silences whatever else routes through it (the exported
Prometheus rules). The local hold is written first: an unreachable
Alertmanager is reported (exit 1) but never leaves the agent paging.
"""

from __future__ import annotations

import getpass
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from opsagent import __version__, secrets
from opsagent.alerts.silences import Silence, SilenceStore
from opsagent.config import Settings
from opsagent.notify.message import iso
from opsagent.units import DURATION_FORM, format_duration, parse_duration

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
MAX_SECONDS = 30 * 86400.0


def alertmanager_silence(url: str, silence: Silence, agent: str, timeout: float) -> str:
    """Create the Alertmanager silence; returns its id. Raises OSError/ValueError with a readable message."""
    matchers = [{"name": k, "value": v, "isRegex": False, "isEqual": True} for k, v in sorted(silence.match.items())]
    matchers.append({"name": "agent", "value": agent, "isRegex": False, "isEqual": True})
    body = {"matchers": matchers, "startsAt": iso(silence.starts_at), "endsAt": iso(silence.ends_at),
            "createdBy": silence.created_by or "opsagent", "comment": silence.comment or "opsagent silence"}
    request = urllib.request.Request(
        url.rstrip("/") + "/api/v2/silences", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "User-Agent": f"opsagent/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # http(s) only: notify.alertmanager_url is validated
            answer: dict[str, Any] = json.loads(resp.read(1 << 20) or b"{}")
    except urllib.error.HTTPError as exc:
        detail = exc.read(500).decode("utf-8", "replace").strip()
        exc.close()
        raise OSError(f"Alertmanager answered HTTP {exc.code}: {detail or exc.reason}") from None
    except urllib.error.URLError as exc:
        raise OSError(f"cannot reach Alertmanager: {exc.reason}") from None
    except TimeoutError:
        raise OSError(f"Alertmanager did not answer within {timeout:g}s") from None
    return str(answer.get("silenceID", ""))


def cmd_silence(settings: Settings, target: str, duration: str, comment: str | None, check: str | None,
                as_json: bool, now: float | None = None) -> int:
    known = {t.name for _, t in settings.checks.targets()} | {"backup"}
    known |= set(settings.backup.postgres) | set(settings.backup.rds_instances) | set(settings.backup.elasticache_clusters)
    if target not in known:
        print(f"opsagent: no configured target named {target!r} (known: {', '.join(sorted(known)) or 'none'})",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        print(f"opsagent: --for: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not 0 < seconds <= MAX_SECONDS:
        print(f"opsagent: --for must be between 1s and 30d; expected {DURATION_FORM}", file=sys.stderr)
        return EXIT_USAGE
    start = time.time() if now is None else now
    match = {"target": target, **({"check": check} if check else {})}
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "opsagent"
    silence = Silence(match=match, starts_at=start, ends_at=start + seconds, comment=comment or "",
                      created_by=user)
    status = EXIT_OK
    problem: str | None = None
    url = settings.notify.alertmanager_url
    if url:
        try:
            am_id = alertmanager_silence(url, silence, settings.agent.name, settings.notify.timeout)
            silence = Silence(**{**silence.to_dict(), "alertmanager_id": am_id or None})
        except (OSError, ValueError) as exc:
            problem = secrets.scrub(str(exc))
            status = EXIT_FAIL
    SilenceStore(Path(settings.agent.state_dir)).add(silence, start)
    if as_json:
        print(json.dumps({**silence.to_dict(), "alertmanager_error": problem}))
    else:
        print(f"silenced {target} for {format_duration(seconds)} until {iso(silence.ends_at)} (id {silence.id}"
              + (f", Alertmanager silence {silence.alertmanager_id}" if silence.alertmanager_id else "") + ")")
    if problem:
        print(f"opsagent: the agent holds the pages, but the Alertmanager silence failed: {problem}", file=sys.stderr)
    return status
