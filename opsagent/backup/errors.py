"""Domain errors of the backup area: each carries the facts and says what to fix."""

from __future__ import annotations


class BackupError(Exception):
    """A backup, replication, restore or drill step failed; the message is for a human."""


class ToolTooOld(BackupError):
    """pg_dump/pg_restore is older than the server's major version."""

    def __init__(self, tool: str, tool_version: str, server_major: int, searched: list[str]) -> None:
        self.tool = tool
        self.tool_version = tool_version
        self.server_major = server_major
        super().__init__(
            f"{tool} {tool_version} is older than the server's major version {server_major}; "
            f"a dump needs {tool} {server_major} or newer (searched: {', '.join(searched) or 'nothing'}); "
            f"install the postgresql-client-{server_major} package or set backup.pg_dump_path"
        )


class ChecksumMismatch(BackupError):
    """An object's bytes do not hash to what the manifest recorded: the backup is damaged."""

    def __init__(self, backup_id: str, name: str, expected: str, actual: str, where: str) -> None:
        self.backup_id = backup_id
        self.name = name
        super().__init__(
            f"backup {backup_id}: object {name} in {where} is damaged "
            f"(SHA-256 {actual[:16]}… but the manifest recorded {expected[:16]}…)"
        )


class NotFound(BackupError):
    """No complete backup with that id."""


class TargetRefused(BackupError):
    """A restore would overwrite a configured (production) target."""


class ObjectMissing(BackupError):
    """A manifest names an object the repository does not hold: that copy of the backup is damaged."""
