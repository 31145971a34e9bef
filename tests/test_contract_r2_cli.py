"""Contract conformance for release 2 through `python -m opsagent ...`: SPEC §1, §2, §4, §9.4, §9.5, §9.7.

One config file (private PostgreSQL for backups, restores and drills) serves every command; exit statuses,
`--config` placement, one JSON document on stdout, effective values and masked secrets as a user sees them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from opsagent_testing.alertmanager import AlertmanagerServer
from opsagent_testing.servers import PostgresServer, free_port
from tests.fixtures.agent import poll
from tests.fixtures.backup import SourceDb, new_database
from tests.fixtures.contract import AMQP, ANNOTATIONS, TOKEN, cli, expire_silences

# -- the command-line scenario ------------------------------------------------------------------------


@dataclass
class Cli:
    config: Path
    dir: Path
    pg: PostgresServer
    source: SourceDb


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory, source_db: SourceDb, private_pg: PostgresServer) -> Cli:
    tmp = tmp_path_factory.mktemp("contract-cli")
    config = {
        "agent": {"name": "api-sidecar", "listen": f"127.0.0.1:{free_port()}", "state_dir": str(tmp / "state"),
                  "admin_token": TOKEN},
        "checks": {
            "cpu": {"interval": "15s"},
            "postgres": [{"name": "main", "dsn": source_db.dsn}],
            "error_rate": [{"name": "api", "metrics_url": "http://127.0.0.1:3000/metrics", "window": "5m",
                            "slo": {"objective": "99.9%", "period": "30d", "min_events": 20}}],
            "rabbitmq": [{"name": "mq", "url": "amqp://app:rabbit-pw@127.0.0.1:5672/%2f", "queues": ["jobs"],
                          "management_url": "http://127.0.0.1:15672"}],
            "sql": [{"name": "rows", "dsn": source_db.dsn, "query": "select 1", "threshold": 5,
                     "comparison": "below", "unit": "rows"},
                    {"name": "writes", "dsn": source_db.dsn, "query": "insert into public.users values (-1, 'x') returning 1",
                     "threshold": 5, "comparison": "above"}],
            "http": [{"name": "web", "url": "https://127.0.0.1:8443/health", "expect_status": 200, "timeout": "5s",
                      "tls_warn": "14d", "body_contains": "ok"}],
            "cloudwatch": [{"name": "queue-depth", "namespace": "AWS/SQS", "metric": "ApproximateNumberOfMessagesVisible",
                            "dimensions": {"QueueName": "jobs"}, "statistic": "Maximum", "period": "5m",
                            "threshold": 100, "comparison": "above", "region": "us-east-1"}],
        },
        "alerts": {"RedisMemoryHigh": {"threshold": 0.8, "for": "5m", "clear_for": "10m", "recovery_threshold": 0.7}},
        "maintenance": [{"match": {"target": "main"}, "start": "2026-12-01T00:00:00Z", "end": "2026-12-01T02:00:00Z"}],
        "notify": {"slack_webhook_url": "https://hooks.slack.com/services/T0/B0/slack-secret-path"},
        "backup": {"schedule": "0 * * * *", "repository": f"file://{tmp}/primary", "replica": f"file://{tmp}/replica",
                   "replica_region": "eu-west-1", "postgres": ["main"], "rpo": "1h", "rto": "2h",
                   "drill_dsn": private_pg.dsn("postgres"), "drill_on_target_server": True},  # one private server
    }
    path = tmp / "opsagent.yaml"
    path.write_text(yaml.safe_dump(config))
    return Cli(path, tmp, private_pg, source_db)


def test_config_flag_before_or_after_and_env(cli_env: Cli) -> None:
    """`--config` works before or after the sub-command, OPSAGENT_CONFIG and OPSAGENT_<SECTION>__<KEY> too."""
    assert cli("--config", str(cli_env.config), "config", "validate").returncode == 0
    assert cli("config", "validate", "--config", str(cli_env.config)).returncode == 0
    shown = cli("config", "show", env={"OPSAGENT_CONFIG": str(cli_env.config), "OPSAGENT_AGENT__NAME": "from-env"})
    assert shown.returncode == 0 and yaml.safe_load(shown.stdout)["agent"]["name"] == "from-env"


@pytest.mark.parametrize("command", [["check", "postgres", "--json"], ["config", "show"], ["rules", "export"],
                                     ["backup", "list", "--json"], ["runbook", "HighCPU"]])
def test_config_flag_position_does_not_matter(cli_env: Cli, command: list[str]) -> None:
    """`opsagent --config F CMD` and `opsagent CMD --config F` print the same thing with the same status."""
    before = cli("--config", str(cli_env.config), *command)
    after = cli(*command, "--config", str(cli_env.config))
    assert before.returncode == after.returncode == 0, before.stderr + after.stderr
    if command[0] != "check":  # a check's numbers move between two runs
        assert before.stdout == after.stdout


def test_config_show_prints_effective_values_with_secrets_masked(cli_env: Cli) -> None:
    """`config show` prints the catalogue's thresholds, the §9.4/§9.5 keys as written, hosts of password-less
    DSNs, and `***` for passwords, tokens and webhook paths."""
    shown = cli("config", "show", "--config", str(cli_env.config))
    assert shown.returncode == 0, shown.stderr
    doc = yaml.safe_load(shown.stdout)
    alerts = doc["alerts"]
    assert (alerts["RabbitMQBacklogHigh"]["threshold"], alerts["RabbitMQBacklogHigh"]["for"]) == (1000, "5m")
    assert alerts["RabbitMQNoConsumers"]["for"] == "5m"
    assert (alerts["HTTPProbeFailed"]["for"], alerts["HTTPProbeFailed"]["severity"]) == ("1m", "critical")
    assert alerts["TLSCertificateExpiring"]["severity"] == "warning"
    assert (alerts["PostgresReplicaLagHigh"]["threshold"], alerts["PostgresReplicaLagHigh"]["for"]) == ("1m", "5m")
    assert (alerts["PgBouncerPoolSaturated"]["threshold"], alerts["PgBouncerPoolSaturated"]["for"]) == (0.9, "5m")
    assert alerts["RedisEvictionPolicyUnsafe"]["for"] == "0s"
    assert {"clear_for": "10m", "recovery_threshold": 0.7}.items() <= alerts["RedisMemoryHigh"].items()
    assert doc["checks"]["error_rate"][0]["slo"]["objective"] == 0.999
    assert doc["checks"]["postgres"][0]["dsn"] == cli_env.source.dsn  # no password: shown whole, host visible
    assert doc["checks"]["rabbitmq"][0]["url"] == "amqp://app:***@127.0.0.1:5672/%2f"
    assert doc["maintenance"][0]["match"]["target"] == "main"
    assert {"name", "namespace", "metric", "dimensions", "statistic", "period", "threshold", "comparison",
            "region"} <= set(doc["checks"]["cloudwatch"][0])
    assert doc["checks"]["http"][0]["tls_warn"] == "14d"
    for secret in (TOKEN, "rabbit-pw", "slack-secret-path"):
        assert secret not in shown.stdout + shown.stderr


@pytest.mark.parametrize(("edit", "key"), [
    ({"checks": {"sql": [{"name": "q", "dsn": "postgresql://h/db", "query": "select 1", "threshold": 1,
                          "comparison": "sideways"}]}}, "checks.sql[0].comparison"),
    ({"checks": {"rabbitmq": [{"name": "mq", "url": AMQP, "queue": ["a"]}]}}, "checks.rabbitmq[0].queues"),
    ({"checks": {"error_rate": [{"name": "api", "metrics_url": "http://127.0.0.1:1/m",
                                 "slo": {"objective": "120%", "period": "30d"}}]}}, "checks.error_rate[0].slo.objective"),
    ({"checks": {"http": [{"name": "w", "url": "http://127.0.0.1:1/", "tls_warn": "soon"}]}}, "checks.http[0].tls_warn"),
    ({"alerts": {"HighCPU": {"threshold": 1.5}}}, "alerts.HighCPU.threshold"),
])
def test_invalid_config_exits_2_naming_the_key(tmp_path: Path, edit: dict[str, Any], key: str) -> None:
    """An invalid key exits 2 with a message naming it and no traceback, for validate, check and run alike."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(edit))
    for command in (["config", "validate"], ["check"]):
        result = cli(*command, "--config", str(path))
        assert result.returncode == 2 and key in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_env_variable_error_names_the_key(cli_env: Cli) -> None:
    """A bad OPSAGENT_ variable exits 2 naming the key."""
    result = cli("run", "--config", str(cli_env.config), env={"OPSAGENT_ALERTS__HIGHCPU__THRESHOLD": "150%"})
    assert result.returncode == 2 and "alerts.HighCPU.threshold" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_json_is_one_document_with_exit_status(cli_env: Cli, tmp_path: Path) -> None:
    """`check --json` prints one JSON list of the contract fields; 0 within thresholds, 1 unreachable, 2 unknown."""
    ok = cli("check", "postgres", "--json", "--config", str(cli_env.config))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    rows = json.loads(ok.stdout)
    assert [set(r) >= {"check", "target", "value", "threshold", "alert", "state", "up", "error"} for r in rows] == [True]
    down = cli("check", "rabbitmq", "--json", "--config", str(cli_env.config))  # wrong password on the shared broker
    assert down.returncode == 1 and json.loads(down.stdout)[0]["up"] is False
    assert "rabbit-pw" not in down.stdout + down.stderr
    writes = cli("check", "sql:writes", "--json", "--config", str(cli_env.config))
    assert writes.returncode == 1 and "read-only" in json.loads(writes.stdout)[0]["error"]
    assert cli_env.source.psql("select count(*) from public.users where id = -1").strip() == "0"
    assert cli("check", "nosuch", "--config", str(cli_env.config)).returncode == 2
    assert cli("check", "--no-such-flag", "--config", str(cli_env.config)).returncode == 2


def test_runbook_and_rules_export(cli_env: Cli, tmp_path: Path) -> None:
    """`runbook` lists and prints runbooks (2 for an unknown alert); `rules export` is promtool-clean and
    carries the burn-rate rules over the exported counters, label `window` per pair."""
    listing = cli("runbook")
    assert listing.returncode == 0
    assert {"RabbitMQBacklogHigh", "HTTPProbeFailed", "ErrorBudgetBurn", "PgBouncerPoolSaturated"} <= set(listing.stdout.split())
    assert cli("runbook", "TLSCertificateExpiring").stdout.startswith("# TLSCertificateExpiring")
    assert cli("runbook", "NoSuchAlert").returncode == 2
    exported = cli("rules", "export", "--config", str(cli_env.config))
    assert exported.returncode == 0
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(exported.stdout)
    lint = subprocess.run(["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=30)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    rules = [r for g in yaml.safe_load(exported.stdout)["groups"] for r in g["rules"]]
    burn = {r["labels"]["window"]: r for r in rules if r.get("alert") == "ErrorBudgetBurn"}
    assert {w: r["labels"]["severity"] for w, r in burn.items()} == {
        "1h/5m": "critical", "6h/30m": "critical", "1d/2h": "warning", "3d/6h": "warning"}
    assert all("opsagent_error_rate_requests_total" in r["expr"] and "opsagent_error_rate_errors_total" in r["expr"]
               for r in burn.values())
    for rule in (r for r in rules if "alert" in r):
        assert {"severity"} <= set(rule["labels"]) and set(rule["annotations"]) >= ANNOTATIONS, rule["alert"]


def test_silence_command(cli_env: Cli, alertmanager_server: AlertmanagerServer, tmp_path: Path) -> None:
    """`silence --target NAME --for 2h --comment ...` creates an Alertmanager silence matching the target."""
    config = yaml.safe_load(cli_env.config.read_text())
    config["notify"]["alertmanager_url"] = alertmanager_server.url
    config["agent"]["state_dir"] = str(tmp_path / "state")
    path = tmp_path / "opsagent.yaml"
    path.write_text(yaml.safe_dump(config))
    comment = f"contract {uuid.uuid4().hex[:6]}"
    result = cli("silence", "--target", "main", "--for", "2h", "--comment", comment, "--config", str(path))
    assert result.returncode == 0, result.stderr
    mine = expire_silences(alertmanager_server, comment)
    assert len(mine) == 1 and mine[0]["status"]["state"] == "active"
    assert {"name": "target", "value": "main", "isRegex": False} in [
        {k: m[k] for k in ("name", "value", "isRegex")} for m in mine[0]["matchers"]]
    ends = dt.datetime.fromisoformat(mine[0]["endsAt"].replace("Z", "+00:00"))
    assert dt.timedelta(hours=1, minutes=58) < ends - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=2)
    assert cli("silence", "--target", "main", "--for", "soon", "--config", str(path)).returncode == 2


def test_backup_commands_exit_status_and_json(cli_env: Cli) -> None:
    """backup run/list/verify, restore and drill answer with their §4 exit codes and one JSON document."""
    config = str(cli_env.config)
    run = cli("backup", "run", "--json", "--config", config)
    assert run.returncode == 0, run.stderr
    json.loads(run.stdout)
    listed = cli("--config", config, "backup", "list", "--json")
    assert listed.returncode == 0
    backups = json.loads(listed.stdout)
    assert backups and {"id", "kind", "target", "time", "size", "checksum", "verified"} <= set(backups[0])
    replica = json.loads(cli("backup", "list", "--replica", "--json", "--config", config).stdout)
    assert backups[0]["id"] in [b["id"] for b in replica]
    assert cli("backup", "verify", backups[0]["id"], "--config", config).returncode == 0
    refused = cli("restore", backups[0]["id"], "--target", cli_env.source.dsn, "--config", config)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    scratch = new_database(cli_env.pg, "contract")
    forced = cli("restore", backups[0]["id"], "--target", cli_env.pg.dsn(scratch), "--config", config)
    assert forced.returncode == 0, forced.stderr
    assert cli_env.pg.psql("select count(*) from public.users", scratch).strip() == "3000"
    drill = cli("drill", "--json", "--config", config)
    assert drill.returncode == 0, drill.stdout + drill.stderr
    json.loads(drill.stdout)
    objects = [p for p in (cli_env.dir / "primary").rglob("*") if p.is_file() and backups[0]["id"] in str(p)
               and "manifest" not in p.name]
    objects[0].write_bytes(objects[0].read_bytes()[:-8] + b"damaged!")
    assert cli("backup", "verify", backups[0]["id"], "--config", config).returncode == 1


def test_run_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """`opsagent run` answers /readyz and exits 0 on SIGTERM."""
    listen = f"127.0.0.1:{free_port()}"
    path = tmp_path / "opsagent.yaml"
    path.write_text(yaml.safe_dump({"agent": {"listen": listen, "state_dir": str(tmp_path / "state")},
                                    "checks": {"cpu": {"interval": "1s"}}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSAGENT_")}
    proc = subprocess.Popen([sys.executable, "-m", "opsagent", "run", "--config", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        poll(lambda: _ready(f"http://{listen}/readyz"), timeout=20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=25) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _ready(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.ConnectionError:
        return False
