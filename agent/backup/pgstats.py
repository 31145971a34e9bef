"""What a drill compares: per-table row counts and an order-independent content checksum.

Taken at backup time inside the very snapshot pg_dump dumps (exported from a
REPEATABLE READ transaction), and again on the restored database. The checksum
sums the first 60 bits of each row's md5 (as numeric, so it never overflows):
constant memory on the server, independent of physical row order.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from agent.backup.manifest import TableStats

_TABLES = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


def table_stats(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, TableStats]:
    """Stats of every user table, read in the connection's current transaction/snapshot."""
    conn.execute("SET LOCAL extra_float_digits = 3" if not conn.autocommit else "SET extra_float_digits = 3")
    out: dict[str, TableStats] = {}
    for schema, table in conn.execute(_TABLES).fetchall():
        query = sql.SQL(
            "SELECT count(*), coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint::numeric), 0)::text "
            "FROM ONLY {}.{} AS t"
        ).format(sql.Identifier(str(schema)), sql.Identifier(str(table)))
        row = conn.execute(query).fetchone()
        assert row is not None
        out[f"{schema}.{table}"] = TableStats(rows=int(str(row[0])), checksum=str(row[1]))
    return out


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
        elif want.checksum != got.checksum:
            problems.append(f"table {name} content differs from backup time (checksum mismatch)")
    return problems
