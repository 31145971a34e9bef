"""Backups: repositories, pg_dump, snapshots, replication, retention and drills."""
