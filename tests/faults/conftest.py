"""Fault-suite plumbing: the soak runs only under ``make soak``; every log line is kept for the secret scan."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from opsagent.telemetry import logging as agent_logging
from tests.faults.evidence import LOG_STREAM

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (not skip) the soak unless OPSAGENT_SOAK=1: `make test` stays fast, `make soak` runs it."""
    if os.environ.get("OPSAGENT_SOAK") == "1":
        return
    soak = [i for i in items if Path(str(i.fspath)).parent == HERE and "soak" in i.name]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [i for i in items if i not in soak]


@pytest.fixture(autouse=True)
def _keep_every_log_line() -> Iterator[None]:
    """Route the agent's structlog output (debug and up) into the evidence kept for the secret scan.

    The previous structlog and stdlib logging set-up is restored afterwards, so
    test modules outside tests/faults see the logging they expect.
    """
    import logging

    import structlog

    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    aps_level = logging.getLogger("apscheduler").level
    agent_logging.configure("debug", stream=LOG_STREAM, json=True)
    yield
    structlog.configure(**saved)
    root.handlers, root.level = handlers, level
    logging.getLogger("apscheduler").setLevel(aps_level)
