"""The boto3 client cache: one client per distinct set of settings."""

from __future__ import annotations

import pytest

from opsagent import aws


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    aws.reset()


def test_clients_with_other_retry_budgets_are_not_shared() -> None:
    """A caller asking for 2 attempts never gets the cached 5-attempt client (or the other way round)."""
    few = aws.client("s3", "us-east-1", max_attempts=2)
    many = aws.client("s3", "us-east-1", max_attempts=5)
    assert few is not many
    # botocore counts the first call too: max_attempts N retries means N + 1 calls in all.
    assert few.meta.config.retries["total_max_attempts"] == 3
    assert many.meta.config.retries["total_max_attempts"] == 6
    assert aws.client("s3", "us-east-1", max_attempts=2) is few
