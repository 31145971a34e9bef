"""Release-2 options of the ``backup`` section: retries, RPO watermarks, and the drill-server rule.

Kept apart from :mod:`opsagent.config.models` so that module stays small; it
imports nothing from there (models imports this).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, model_validator

from opsagent.units import format_duration, parse_duration

_Seconds = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)]
_IDENT = r"[A-Za-z_][A-Za-z0-9_$]{0,62}"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RetryPolicy(_Frozen):
    """A failed scheduled backup is tried again within its slot: ``attempts`` in all, waits doubling from ``backoff``."""

    attempts: Annotated[int, Field(ge=1, le=20)] = 4
    backoff: _Seconds = 60.0
    max_backoff: _Seconds = 900.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        return float(min(self.max_backoff, self.backoff * (2 ** (attempt - 1))))


class Watermark(_Frozen):
    """Where the newest committed row's time is: ``{table, column}`` or a ``query`` returning one timestamp."""

    table: Annotated[str, Field(pattern=rf"^{_IDENT}(\.{_IDENT})?$")] | None = None
    column: Annotated[str, Field(pattern=rf"^{_IDENT}$")] | None = None
    query: str | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Watermark:
        if self.query is not None and (self.table or self.column):
            raise ValueError("give either {table, column} or query, not both")
        if self.query is None and not (self.table and self.column):
            raise ValueError("expected {table: schema.table, column: a timestamp column} or {query: SELECT ...}")
        if self.query is not None and not re.match(r"^\s*(select|with)\b", self.query, re.IGNORECASE):
            raise ValueError("query must be a SELECT returning one timestamp")
        return self


def server_of(dsn: str) -> tuple[str, int]:
    """(host, port) with libpq defaults and loopback spellings unified."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(dsn)
    host = str(params.get("hostaddr") or params.get("host") or "localhost").lower().strip("[]")
    if host in ("localhost", "127.0.0.1", "::1", "::ffff:127.0.0.1") or host.startswith("/"):
        host = "localhost"
    return host, int(str(params.get("port") or 5432))


def drill_server_problem(drill_dsn: str, targets: list[tuple[str, str]]) -> str | None:
    """Why ``drill_dsn`` may not be used (it is on a configured target's server), or None."""
    try:
        drill = server_of(drill_dsn)
    except Exception:  # noqa: BLE001 - the DSN's own validator names a malformed DSN
        return None
    for name, dsn in targets:
        try:
            if server_of(dsn) == drill:
                return (f"backup.drill_dsn is on the server of checks.postgres target {name!r}: every drill would "
                        "restore a full copy onto it; name a scratch server, or set backup.drill_on_target_server: true")
        except Exception:  # noqa: BLE001 - an unparsable target DSN is reported by its own validator
            continue
    return None
