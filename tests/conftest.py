"""Shared fixtures: each fixture module owns one kind of real part."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import structlog
from hypothesis import settings

from opsagent import secrets

# The gate (`make test`, CI) runs the property tests on a fixed example sequence so a red run always
# means a change broke something; `HYPOTHESIS_PROFILE=explore make test` draws fresh examples to hunt.
settings.register_profile("gate", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "gate"))

pytest_plugins = [
    "tests.fixtures.aws_audit",
    "opsagent_testing.servers",
    "opsagent_testing.aws",
    "opsagent_testing.pgbouncer",
    "tests.fixtures.agent",
    "opsagent_testing.alertmanager",
    "tests.fixtures.backup",
    "tests.fixtures.browser",
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
    from opsagent import aws

    aws.reset()
    yield
    aws.reset()
