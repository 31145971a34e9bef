"""deploy/examples: one configuration per platform, each valid and covering its whole stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsagent import secrets
from opsagent.alerts.catalog import ALARMS
from opsagent.config import Settings, load_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "deploy" / "examples"
PROFILES = ("ingantapay", "sales-scorecard", "powerpay", "monay", "paypass")

# The alarms of SPEC §3, the platform alarm table monay sets explicitly.
SPEC_ALARMS = ("HighCPU", "HighMemory", "HighErrorRate", "PostgresConnectionsExhausted", "PgBouncerClientsWaiting",
               "RedisMemoryHigh", "TargetDown", "BackupStale", "ReplicaStale", "BackupFailed", "RestoreDrillFailed")


def load(name: str) -> Settings:
    return load_config(EXAMPLES / f"{name}.yaml", env={})


def raw(name: str) -> dict[str, Any]:
    data = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_there_is_exactly_one_example_per_platform() -> None:
    """deploy/examples holds the five platform profiles and nothing else."""
    assert sorted(p.stem for p in EXAMPLES.glob("*.yaml")) == sorted(PROFILES)


@pytest.mark.parametrize("name", PROFILES)
def test_each_example_validates(name: str) -> None:
    """Every platform example passes config validation with no environment at all."""
    settings = load(name)
    assert settings.agent.listen == "0.0.0.0:9108"
    assert settings.backup.replica and settings.backup.replica_region
    assert settings.backup.replica_region != settings.agent.region
    assert settings.notify.alertmanager_url


def test_the_cli_validates_an_example_and_rejects_a_broken_one(tmp_path: Path) -> None:
    """`python -m agent config validate --config` exits 0 on an example and 2 on a copy with a bad key."""
    ok = subprocess.run([sys.executable, "-m", "opsagent", "config", "validate", "--config", str(EXAMPLES / "powerpay.yaml")],
                        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"}, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text((EXAMPLES / "powerpay.yaml").read_text().replace("queue_url:", "queue_ulr:", 1))
    bad = subprocess.run([sys.executable, "-m", "opsagent", "config", "validate", "--config", str(broken)],
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"}, cwd=ROOT)
    assert bad.returncode == 2
    assert "checks.sqs[0]" in bad.stderr + bad.stdout


def test_ingantapay_covers_rds_bullmq_kyc_replication_and_sentry() -> None:
    """IngantaPay watches RDS PostgreSQL, ElastiCache with its BullMQ queues, the KYC bucket's replication, and reports to Sentry."""
    s = load("ingantapay")
    assert s.checks.postgres and s.backup.rds_instances and s.backup.postgres
    assert s.checks.redis and s.backup.elasticache_clusters
    [bull] = s.checks.bullmq
    assert "payouts" in bull.queues and bull.url.get_secret_value() == s.checks.redis[0].url.get_secret_value()
    [kyc] = s.checks.s3_replication
    assert "kyc" in kyc.bucket and kyc.destination_region == s.backup.replica_region
    assert s.notify.sentry_dsn is not None


def test_sales_scorecard_covers_pgbouncer_the_read_replica_and_reports() -> None:
    """Sales Scorecard watches RDS through PgBouncer, its read replica, and the reports bucket."""
    s = load("sales-scorecard")
    assert s.checks.pgbouncer
    names = {t.name for t in s.checks.postgres}
    assert {"primary", "replica"} <= names
    assert s.backup.postgres == ["primary"]  # never pg_dump the replica as well
    [reports] = s.checks.s3_replication
    assert "reports" in reports.bucket


def test_powerpay_covers_the_alb_rds_elasticache_and_sqs() -> None:
    """PowerPay measures the ALB's 5xx rate from CloudWatch and watches RDS, ElastiCache and its SQS queues with DLQs."""
    s = load("powerpay")
    assert any(t.cloudwatch is not None for t in s.checks.error_rate)
    assert s.checks.postgres and s.checks.redis and s.backup.rds_instances and s.backup.elasticache_clusters
    assert s.checks.sqs and all(q.dlq_url for q in s.checks.sqs)


def test_monay_sets_the_full_alarm_table_and_its_rpo_rto() -> None:
    """Monay runs several apps, sets every platform alarm explicitly, RTO 2 h / RPO 1 h, hourly backups copied cross-region."""
    s = load("monay")
    assert len(s.checks.error_rate) >= 3
    assert set(raw("monay")["alerts"]) >= set(SPEC_ALARMS)
    for name in SPEC_ALARMS:
        effective = s.alarm(name)
        assert effective.enabled
        assert (effective.severity, effective.for_seconds) == (ALARMS[name].severity, ALARMS[name].for_seconds), name
    assert (s.backup.rpo, s.backup.rto) == (3600, 7200)
    assert s.backup.schedule == "0 * * * *"
    assert s.backup.replica and s.backup.replica_region and s.backup.rds_instances


def test_paypass_backs_up_a_self_hosted_postgres_with_pg_dump_to_s3() -> None:
    """PayPass has no RDS: its PostgreSQL is backed up with pg_dump into S3 (and the replica), and Redis is watched."""
    s = load("paypass")
    assert not s.backup.rds_instances
    assert s.backup.postgres == [t.name for t in s.checks.postgres]
    assert ".rds.amazonaws.com" not in s.checks.postgres[0].dsn.get_secret_value()
    assert s.backup.repository and s.backup.repository.startswith("s3://")
    assert s.checks.redis


@pytest.mark.parametrize("name", PROFILES)
def test_examples_carry_no_real_secret(name: str) -> None:
    """No example holds a password, webhook URL, routing key or token; the only Sentry DSN is Sentry's documentation placeholder."""
    s = load(name)
    assert s.notify.slack_webhook_url is None and s.notify.pagerduty_routing_key is None
    assert s.agent.admin_token is None
    if s.notify.sentry_dsn is not None:
        assert "examplePublicKey" in s.notify.sentry_dsn.get_secret_value()
    for value in s.secret_values():
        assert secrets.url_password(value) is None, f"{name}: a URL with a password"


def test_secrets_injected_by_ecs_never_show_in_config_show() -> None:
    """With the DSNs and keys injected as ECS secrets, the effective config shows them as *** only."""
    env = {
        "OPSAGENT_CHECKS__POSTGRES": json.dumps([{"name": "ledger", "dsn": "postgresql://opsagent:s3cr3t-pw@db:5432/ingantapay"}]),
        "OPSAGENT_NOTIFY__PAGERDUTY_ROUTING_KEY": "rk-0123456789abcdef",
        "OPSAGENT_BACKUP__DRILL_DSN": "postgresql://drill:drill-pw-123@scratch:5432/drill",
    }
    s = load_config(EXAMPLES / "ingantapay.yaml", env=env)
    shown = json.dumps(s.redacted())
    for secret in ("s3cr3t-pw", "rk-0123456789abcdef", "drill-pw-123", "examplePublicKey"):
        assert secret not in shown
    assert s.checks.postgres[0].dsn.get_secret_value().endswith("@db:5432/ingantapay")


# -- the seed stacks of release 2 (issue 18) --------------------------------------------------------


def test_paypass_matches_its_seed_neon_rabbitmq_redis_and_several_services() -> None:
    """PayPass watches Neon per run with idle_ok, RabbitMQ queues, Redis and several services' error rates, and pg_dumps to S3."""
    s = load("paypass")
    [neon] = s.checks.postgres
    assert neon.connect == "per_run" and neon.idle_ok and neon.interval >= 300
    assert "neon.tech" in neon.dsn.get_secret_value() and "-pooler" not in neon.dsn.get_secret_value()
    assert not s.checks.pgbouncer  # Neon's pooler has no admin console
    [broker] = s.checks.rabbitmq
    assert broker.queues and broker.management_url
    assert s.checks.redis and len(s.checks.error_rate) >= 3
    assert s.backup.postgres == ["main"] and (s.backup.repository or "").startswith("s3://")


def test_monay_has_five_services_and_a_read_replica() -> None:
    """Monay's five ECS services each have an error-rate target, and its RDS read replica is a postgres target."""
    s = load("monay")
    assert len(s.checks.error_rate) == 5
    assert any("replica" in t.name and "-ro." in t.dsn.get_secret_value() for t in s.checks.postgres)
    assert "wallet-replica" not in s.backup.postgres


@pytest.mark.parametrize("name", ["sales-scorecard", "ingantapay"])
def test_ses_bounce_and_complaint_rates_are_watched_below_the_review_levels(name: str) -> None:
    """Sales Scorecard and IngantaPay page on SES bounce and complaint rates before AWS's review levels (5 %, 0.1 %)."""
    metrics = {t.metric: t for t in load(name).checks.cloudwatch if t.namespace == "AWS/SES"}
    assert metrics["Reputation.BounceRate"].threshold < 0.05
    assert metrics["Reputation.ComplaintRate"].threshold < 0.001


def test_ingantapay_watches_webhook_freshness_and_stuck_payments_in_sql() -> None:
    """IngantaPay's on-call gets minutes since the last provider webhook and payments stuck PENDING over 15 minutes."""
    sql = {t.name: t for t in load("ingantapay").checks.sql}
    assert "provider_webhooks" in sql["webhook-freshness"].query and sql["webhook-freshness"].unit == "minutes"
    assert "PENDING" in sql["stuck-payments"].query and "15 minutes" in sql["stuck-payments"].query


def test_powerpay_watches_lambda_api_gateway_sns_sms_spend_and_rds_through_cloudwatch() -> None:
    """PowerPay's recipes cover Lambda Errors/Throttles, API Gateway 5XXError, SNS SMS spend, RDS storage and CPU credits."""
    metrics = {(t.namespace, t.metric) for t in load("powerpay").checks.cloudwatch}
    assert {("AWS/Lambda", "Errors"), ("AWS/Lambda", "Throttles"), ("AWS/ApiGateway", "5XXError"),
            ("AWS/SNS", "SMSMonthToDateSpentUSD"), ("AWS/RDS", "FreeStorageSpace"),
            ("AWS/RDS", "CPUCreditBalance")} <= metrics
    below = {t.metric for t in load("powerpay").checks.cloudwatch if t.comparison == "below"}
    assert below == {"FreeStorageSpace", "CPUCreditBalance"}
