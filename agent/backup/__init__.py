"""Backups and restore drills: repositories (file, s3), pg_dump, replication, retention, fleet lock."""
