"""The drill's table checksums: cheap typed hashes where possible, stable text hashes otherwise, old manifests still checked."""

from __future__ import annotations

import psycopg

from opsagent.backup import pgstats
from opsagent.backup.manifest import TableStats
from opsagent_testing.servers import PostgresServer
from tests.fixtures.backup import new_database

SCHEMA = """
CREATE TABLE a_doc (id int, body json, at timestamptz, span interval, raw bytea);
CREATE TABLE b_typed (id int PRIMARY KEY, name text, score float8, meta jsonb, at timestamptz);
INSERT INTO a_doc SELECT g, json_build_object('g', g), '2026-03-01T12:00:00Z'::timestamptz + g * interval '1 hour',
                         g * interval '90 minutes', decode(md5(g::text), 'hex') FROM generate_series(1, 500) g;
INSERT INTO b_typed SELECT g, 'n' || g, g / 3.0, jsonb_build_object('g', g), '2026-03-01T00:00:00Z'
                    FROM generate_series(1, 500) g;
"""


def _db(server: PostgresServer) -> str:
    name = new_database(server, "stats")
    server.psql(SCHEMA, name)
    return name


def _stats(server: PostgresServer, db: str, methods: dict[str, str] | None = None, options: str = "",
           autocommit: bool = True) -> dict[str, TableStats]:
    with psycopg.connect(server.dsn(db), autocommit=autocommit, options=options) as conn:
        return pgstats.table_stats(conn, methods)


def test_typed_hash_where_every_column_hashes_and_text_hash_for_json(private_pg: PostgresServer) -> None:
    """A table with a json column (no hash function) falls back to the text hash; the other gets the typed hash."""
    stats = _stats(private_pg, _db(private_pg))
    assert stats["public.a_doc"].method == pgstats.TEXT_HASH and stats["public.a_doc"].rows == 500
    assert stats["public.b_typed"].method == pgstats.HASH_RECORD and stats["public.b_typed"].rows == 500


def test_one_changed_value_changes_the_checksum_and_row_order_does_not(private_pg: PostgresServer) -> None:
    """Rewriting a table in another physical order keeps its checksum; changing one value in it does not."""
    db = _db(private_pg)
    before = _stats(private_pg, db)
    private_pg.psql("CREATE TABLE tmp AS SELECT * FROM b_typed ORDER BY id DESC; TRUNCATE b_typed; "
                    "INSERT INTO b_typed SELECT * FROM tmp; DROP TABLE tmp;"
                    "CREATE TABLE tmp2 AS SELECT * FROM a_doc ORDER BY id DESC; TRUNCATE a_doc; "
                    "INSERT INTO a_doc SELECT * FROM tmp2; DROP TABLE tmp2;", db)
    assert _stats(private_pg, db) == before
    private_pg.psql("UPDATE b_typed SET score = score + 1e-9 WHERE id = 250; UPDATE a_doc SET raw = '\\x00' WHERE id = 7",
                    db)
    after = _stats(private_pg, db)
    for table in ("public.a_doc", "public.b_typed"):
        assert after[table].rows == before[table].rows and after[table].checksum != before[table].checksum, table
    problems = pgstats.compare(before, after)
    assert len(problems) == 2 and all("checksum mismatch" in p for p in problems), problems


def test_text_hash_does_not_depend_on_the_sessions_time_zone_or_date_style(private_pg: PostgresServer) -> None:
    """A drill server whose TimeZone, DateStyle, IntervalStyle and bytea_output differ reads the same checksum."""
    db = _db(private_pg)
    plain = _stats(private_pg, db)
    odd = _stats(private_pg, db, options="-c TimeZone=Asia/Tokyo -c DateStyle=German -c IntervalStyle=iso_8601 "
                                         "-c bytea_output=escape")
    assert odd["public.a_doc"] == plain["public.a_doc"]


def test_an_old_md5_manifest_is_checked_with_md5(private_pg: PostgresServer) -> None:
    """Manifests written before the methods recorded md5 checksums; asking for md5 reproduces exactly that formula."""
    db = _db(private_pg)
    stats = _stats(private_pg, db, methods={"public.b_typed": pgstats.MD5})
    with psycopg.connect(private_pg.dsn(db), autocommit=True) as conn:
        conn.execute("SET extra_float_digits = 3")
        row = conn.execute("SELECT coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint::numeric), 0)"
                           "::text FROM ONLY public.b_typed AS t").fetchone()
    assert row is not None
    assert stats["public.b_typed"] == TableStats(rows=500, checksum=str(row[0]), method=pgstats.MD5)
    assert stats["public.a_doc"].method == pgstats.TEXT_HASH  # not named: the cheapest method


def test_a_table_that_cannot_be_typed_hashed_leaves_the_snapshot_transaction_usable(private_pg: PostgresServer) -> None:
    """Inside the backup's REPEATABLE READ transaction the json table's failed typed hash does not abort it."""
    db = _db(private_pg)
    with psycopg.connect(private_pg.dsn(db), autocommit=False) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        stats = pgstats.table_stats(conn, {"public.a_doc": pgstats.HASH_RECORD})
        assert conn.execute("SELECT 1").fetchone() == (1,)
        conn.rollback()
    assert stats["public.a_doc"].method == pgstats.TEXT_HASH and stats["public.b_typed"].method == pgstats.HASH_RECORD
    assert stats == _stats(private_pg, db)


def test_a_method_the_restore_cannot_reproduce_is_a_drill_problem() -> None:
    """If the restored table could only be checksummed another way than at backup time, the comparison says so."""
    want = {"public.t": TableStats(rows=3, checksum="1", method=pgstats.HASH_RECORD)}
    got = {"public.t": TableStats(rows=3, checksum="2", method=pgstats.TEXT_HASH)}
    assert pgstats.compare(want, got) == [
        "table public.t could not be checksummed the way the backup recorded (hash_record); got text_hash"]


def test_a_manifest_written_before_methods_reads_as_md5() -> None:
    """Tables in an older manifest carry no method; they load as md5, which is what those checksums are."""
    import json

    from opsagent.backup.manifest import Manifest

    raw = {"id": "postgres-main-20260101T000000Z-abcdef", "kind": "postgres", "target": "main", "started": 1.0,
           "finished": 2.0, "size": 3, "compression": "x", "objects": [{"name": "data.dump", "size": 3, "sha256": "0" * 64}],
           "server_version": "15", "tool_version": "pg_dump 15", "tables": {"public.t": {"rows": 3, "checksum": "42"}}}
    manifest = Manifest.from_json(json.dumps(raw).encode())
    assert manifest.tables["public.t"] == TableStats(rows=3, checksum="42", method=pgstats.MD5)
    assert json.loads(Manifest.from_json(manifest.to_json()).to_json())["tables"]["public.t"]["method"] == "md5"
