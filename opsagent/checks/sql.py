"""A business check in SQL: one number from one query ("minutes since the last webhook", "payments stuck PENDING").

The query runs alone in a read-only transaction (the session is opened with
``default_transaction_read_only=on``; the extended protocol allows one statement) under ``statement_timeout``, so a check can neither
change data nor hold locks past its deadline. Rows are read one at a time and
at most two are kept (then the query is cancelled): a query that would return
millions of rows costs the agent two rows of memory, and "several rows" is
still detected. The
answer must be exactly one row of one number (an ``interval`` counts, in
seconds); anything else is a check error naming the target, never a guess.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Mapping
from typing import Any, ClassVar

import psycopg

from opsagent.checks.base import CheckError, Reading
from opsagent.checks.postgres import ConnectionSlot, connect_kwargs, fetch_bounded
from opsagent.config import SqlTarget


def as_number(value: object, target: str) -> float:
    """The query's answer as a float; CheckError for NULL, text, booleans and other non-numbers."""
    if isinstance(value, bool) or value is None:
        shown = "NULL" if value is None else repr(value)
        raise CheckError(f"sql check {target!r}: the query returned {shown}, not a number")
    if isinstance(value, (int, float, decimal.Decimal)):
        number = float(value)
        if number != number:
            raise CheckError(f"sql check {target!r}: the query returned NaN, not a number")
        return number
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    raise CheckError(f"sql check {target!r}: the query returned a {type(value).__name__} "
                     f"({str(value)[:40]!r}), not a number; cast it, e.g. count(*) or EXTRACT(EPOCH FROM …)")


def single_value(rows: list[tuple[Any, ...]], target: str) -> object:
    """The one cell of a one-row, one-column answer."""
    if not rows:
        raise CheckError(f"sql check {target!r}: the query returned no row; it must return exactly one number "
                         "(wrap it in an aggregate such as count(*) or COALESCE(max(…), 0))")
    if len(rows) > 1:
        raise CheckError(f"sql check {target!r}: the query returned several rows; it must return exactly one")
    if len(rows[0]) != 1:
        raise CheckError(f"sql check {target!r}: the query returned {len(rows[0])} columns; it must return one")
    return rows[0][0]


class SqlCheck:
    """One number from one read-only query on one persistent, tagged connection."""

    kind: ClassVar[str] = "sql"

    def __init__(self, target: SqlTarget) -> None:
        self.target = target
        params = connect_kwargs(target.dsn.get_secret_value(), target.deadline)
        params["options"] = f"{params['options']} -c default_transaction_read_only=on"
        self._params = params
        self._slot = ConnectionSlot()
        self._details: dict[str, Any] = {"comparison": target.comparison, "threshold": target.threshold}
        if target.unit:
            self._details["unit"] = target.unit

    def _connection(self) -> psycopg.Connection[Any]:
        return self._slot.get(lambda: psycopg.connect(autocommit=True, **self._params))

    def measure(self) -> Reading:
        conn = self._connection()
        try:
            # One statement (extended protocol) in its own implicit transaction, read-only by the session's
            # default_transaction_read_only: no BEGIN/ROLLBACK round trips whose answers would be unbounded reads.
            rows = fetch_bounded(conn, self.target.query, 2, f"sql check {self.target.name!r}: the query")
        except CheckError as exc:
            self._slot.drop()
            if "more than 2 rows" in str(exc):
                raise CheckError(f"sql check {self.target.name!r}: the query returned several rows; "
                                 "it must return exactly one") from None
            raise
        except psycopg.Error:
            self._slot.drop()
            raise
        value = as_number(single_value(rows, self.target.name), self.target.name)
        return Reading(value=value, details=dict(self._details), source="sql")

    def context(self) -> Mapping[str, Any]:
        return {"query": self.target.query[:500]}

    def close(self) -> None:
        self._slot.close()
