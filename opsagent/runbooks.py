"""The on-call runbooks shipped in ``opsagent/runbooks/``: one Markdown page per alert (plus procedures).

``opsagent runbook`` lists them and ``opsagent runbook ALERT`` prints one. They
are package data, read through :mod:`importlib.resources`, so a wheel installed
anywhere finds them (the alerts' ``runbook_url`` points at the same files in the
repository).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

INDEX = "README.md"


def runbook_dir() -> Path:
    """The folder of the package's runbooks (a real directory: setuptools installs package data as files)."""
    return Path(str(resources.files("opsagent") / "runbooks"))


def list_runbooks() -> list[str]:
    """Every runbook name (the file name without ``.md``), alerts and procedures, sorted; the index excluded."""
    directory = runbook_dir()
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.md") if p.name != INDEX)


def read_runbook(name: str) -> str:
    """The Markdown text of runbook ``name`` (``HighCPU``, ``HighCPU.md`` or any letter case); KeyError if unknown."""
    wanted = name.strip().removesuffix(".md")
    names = list_runbooks()
    match = wanted if wanted in names else next((n for n in names if n.lower() == wanted.lower()), None)
    if match is None or "/" in wanted or "\\" in wanted:
        raise KeyError(name)
    return (runbook_dir() / f"{match}.md").read_text(encoding="utf-8")
