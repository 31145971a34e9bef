"""Backups and restore drills (SPEC §7), PostgreSQL/file/S3 part.

- ``repository``: file:// and s3:// stores; objects streamed, manifest written last.
- ``manifest``: what makes a backup exist, and what the drill will compare.
- ``pgtools`` / ``pgdump`` / ``pgstats``: pg_dump/pg_restore discovery, streaming, snapshot stats.
- ``engine``: one run (cleanup, dump, replicate, retention); ``retention``: pure GFS selection.
- ``lock`` / ``schedule``: one runner per fleet and per slot.
- ``drill``: restore drills into scratch databases.
- ``service``: what the daemon schedules and scrapes; ``commands``: what the CLI prints.
- ``snapshots`` / ``rds_drill``: RDS/Aurora/ElastiCache snapshots (separate owner).
"""
