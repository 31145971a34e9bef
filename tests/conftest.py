"""Shared fixtures: each fixture module owns one kind of real part."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from agent import secrets

pytest_plugins = [
    "tests.fixtures.aws_audit",
    "tests.fixtures.servers",
    "tests.fixtures.aws",
    "tests.fixtures.pgbouncer",
    "tests.fixtures.agent",
    "tests.fixtures.alertmanager",
    "tests.fixtures.backup",
]


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    """Each test registers its own secrets; none leak into the next test's scrubber."""
    yield
    secrets.clear()
    structlog.contextvars.clear_contextvars()


@pytest.fixture(autouse=True)
def _fresh_aws_clients() -> Iterator[None]:
    """boto3 clients are cached per process; a test that points AWS_* elsewhere gets new ones."""
    from agent import aws

    aws.reset()
    yield
    aws.reset()
