"""What a drill compares: per-table row counts and an order-independent content checksum.

Taken at backup time inside the very snapshot pg_dump dumps (exported from a
REPEATABLE READ transaction), and again on the restored database with the
method the manifest recorded for that table. Every checksum is a sum of per-row
hashes (as numeric, so it never overflows): constant memory on the server,
independent of physical row order.

Methods, cheapest first (a ~170 MB table, measured with benchmarks/):

- ``hash_record``: ``hash_record_extended(row, 0)``, the typed 64-bit hash
  that hash partitioning relies on staying stable across releases; no text
  output at all (0.44 s). PostgreSQL 14+, and only when every column type has
  an extended hash function (``json``, ``point``… have none).
- ``text_hash``: ``hashtextextended(row::text, 0)`` with the output settings
  pinned (UTC, ISO dates, hex bytea, exact floats), so a drill server whose
  defaults differ still reads the same text (1.2 s). The fallback.
- ``md5``: what manifests written before these methods recorded (2.2 s, and
  sensitive to the session's TimeZone/DateStyle); only ever used to check them.
"""

from __future__ import annotations

from collections.abc import Mapping

import psycopg
from psycopg import sql

from opsagent.backup.manifest import TableStats

_TABLES = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""

HASH_RECORD, TEXT_HASH, MD5 = "hash_record", "text_hash", "md5"

_ROW_HASH = {
    HASH_RECORD: "hash_record_extended(t, 0)::numeric",
    TEXT_HASH: "hashtextextended(t::text, 0)::numeric",
    MD5: "('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint::numeric",
}
# Row text that does not depend on the server's or session's defaults (text_hash only: md5 manifests were
# taken with the defaults of their time and are checked the same way).
_PINNED = ("TimeZone = 'UTC'", "DateStyle = 'ISO, MDY'", "IntervalStyle = 'postgres'", "bytea_output = 'hex'")


def table_stats(conn: psycopg.Connection[tuple[object, ...]],
                methods: Mapping[str, str] | None = None) -> dict[str, TableStats]:
    """Stats of every user table, read in the connection's current transaction/snapshot.

    ``methods`` (table -> method, from a manifest) says how to checksum each table to compare with it;
    without it each table gets the cheapest method the server and its column types allow.
    """
    local = "" if conn.autocommit else "LOCAL "
    conn.execute(f"SET {local}extra_float_digits = 3")
    version = conn.info.server_version
    pinned = False
    out: dict[str, TableStats] = {}
    for schema, table in conn.execute(_TABLES).fetchall():
        name = f"{schema}.{table}"
        wanted = (methods or {}).get(name)
        if wanted is None:
            wanted = HASH_RECORD if version >= 140000 else TEXT_HASH if version >= 110000 else MD5
        relation = sql.Identifier(str(schema), str(table))
        stats = None
        for method in (wanted, TEXT_HASH):  # a column type without an extended hash function: hash its text
            if method == TEXT_HASH and not pinned:
                for setting in _PINNED:  # once per connection (or snapshot transaction)
                    conn.execute(f"SET {local}{setting}")
                pinned = True
            stats = _one_table(conn, relation, method)
            if stats is not None:
                break
        assert stats is not None
        out[name] = stats
    return out


def _one_table(conn: psycopg.Connection[tuple[object, ...]], relation: sql.Composable,
               method: str) -> TableStats | None:
    """Rows and checksum of one table; None when ``hash_record`` cannot hash one of its column types."""
    if method not in _ROW_HASH:
        raise ValueError(f"unknown table checksum method {method!r}")
    query = sql.SQL("SELECT count(*), coalesce(sum({}), 0)::text FROM ONLY {} AS t").format(
        sql.SQL(_ROW_HASH[method]), relation)
    if method != HASH_RECORD:
        row = conn.execute(query).fetchone()
    else:
        guarded = not conn.autocommit  # an error must not abort the snapshot's transaction
        if guarded:
            conn.execute("SAVEPOINT opsagent_stats")
        try:
            row = conn.execute(query).fetchone()
        except psycopg.errors.UndefinedFunction:
            if guarded:
                conn.execute("ROLLBACK TO SAVEPOINT opsagent_stats")
            return None
        if guarded:
            conn.execute("RELEASE SAVEPOINT opsagent_stats")
    assert row is not None
    return TableStats(rows=int(str(row[0])), checksum=str(row[1]), method=method)


def compare(expected: dict[str, TableStats], actual: dict[str, TableStats]) -> list[str]:
    """Human lines for every difference; empty when the restore matches the backup."""
    problems = []
    for name in sorted(set(expected) | set(actual)):
        want, got = expected.get(name), actual.get(name)
        if want is None:
            problems.append(f"table {name} exists after restore but was not in the backup")
        elif got is None:
            problems.append(f"table {name} is missing after restore")
        elif want.rows != got.rows:
            problems.append(f"table {name} has {got.rows} rows after restore, {want.rows} at backup time")
        elif want.method != got.method:
            problems.append(f"table {name} could not be checksummed the way the backup recorded ({want.method}); "
                            f"got {got.method}")
        elif want.checksum != got.checksum:
            problems.append(f"table {name} content differs from backup time (checksum mismatch)")
    return problems
