"""Configuration: YAML + environment, units, and one clear line per problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from opsagent.config import ConfigError, load_config
from opsagent.units import format_duration, parse_duration, parse_ratio

GOOD = """
agent: {name: api-sidecar, listen: "127.0.0.1:9108"}
checks:
  postgres:
    - {name: main, dsn: "postgresql://app:pg-pass-123@db:5432/app", interval: 15s}
  redis:
    - {name: cache, url: "redis://:redis-pass-456@cache:6379/0"}
  error_rate:
    - {name: api, metrics_url: "http://127.0.0.1:3000/metrics", window: 5m}
alerts:
  RedisMemoryHigh: {threshold: 75%, for: 5m}
notify:
  alertmanager_url: http://alertmanager:9093
  slack_webhook_url: https://hooks.slack.test/services/T000/B000/slack-secret-789
  pagerduty_routing_key: pd-routing-key-abc
backup:
  repository: file:///tmp/opsagent-backups
  postgres: [main]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "opsagent.yaml"
    path.write_text(text)
    return path


def test_good_config_loads_with_units_parsed(tmp_path: Path) -> None:
    """Durations become seconds and percentages become fractions."""
    s = load_config(write(tmp_path, GOOD), env={})
    assert s.agent.name == "api-sidecar"
    assert s.checks.error_rate[0].window == 300
    assert s.alarm("RedisMemoryHigh").threshold == pytest.approx(0.75)
    assert s.alarm("RedisMemoryHigh").for_seconds == 300
    assert s.alarm("HighCPU").threshold == 0.80  # catalogue default
    assert s.alarm("BackupStale").threshold == 3600  # backup.rpo


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    """OPSAGENT_<SECTION>__<KEY> wins over the YAML value and leaves sibling keys alone."""
    env = {"OPSAGENT_AGENT__LISTEN": "127.0.0.1:9200", "OPSAGENT_ALERTS__HIGHCPU__THRESHOLD": "70%",
           "OPSAGENT_NOTIFY__PAGERDUTY_ROUTING_KEY": "from-env-key"}
    s = load_config(write(tmp_path, GOOD), env=env)
    assert s.agent.listen == "127.0.0.1:9200"
    assert s.agent.name == "api-sidecar"
    assert s.alarm("HighCPU").threshold == pytest.approx(0.70)
    assert s.notify.pagerduty_routing_key is not None
    assert s.notify.pagerduty_routing_key.get_secret_value() == "from-env-key"


def test_environment_alone_can_configure_target_lists() -> None:
    """ECS injects whole target lists as JSON in one variable."""
    env = {"OPSAGENT_CHECKS__REDIS": '[{"name": "cache", "url": "redis://127.0.0.1:6379/0"}]'}
    s = load_config(None, env=env)
    assert [t.name for t in s.checks.redis] == ["cache"]


def test_show_masks_every_secret(tmp_path: Path) -> None:
    """config show prints *** for passwords, webhook URLs and routing keys."""
    s = load_config(write(tmp_path, GOOD), env={})
    text = str(s.redacted())
    for secret in ("pg-pass-123", "redis-pass-456", "slack-secret-789", "pd-routing-key-abc"):
        assert secret not in text
    assert "postgresql://app:***@db:5432/app" in text


BROKEN: list[tuple[str, str]] = [
    ("agent: {listen: nope}", "agent.listen"),
    ("agent: {listen: '127.0.0.1:99999'}", "agent.listen"),
    ("agent: {nmae: x}", "agent.nmae"),
    ("agnet: {}", "agnet"),
    ("checks: {cpu: {interval: 5x}}", "checks.cpu.interval"),
    ("checks: {cpu: {interval: -5}}", "checks.cpu.interval"),
    ("checks: {cpu: {interval: 0.1s}}", "checks.cpu"),
    ("checks: {cpu: {interval: [1]}}", "checks.cpu.interval"),
    ("checks: {postgres: {name: a}}", "checks.postgres"),
    ("checks: {postgres: [{name: a}]}", "checks.postgres[0].dsn"),
    ("checks: {postgres: [{name: a, dsn: 'mysql://u:p@h/db'}]}", "checks.postgres[0].dsn"),
    ("checks: {postgres: [{name: 'bad name!', dsn: 'postgresql://h/db'}]}", "checks.postgres[0].name"),
    ("checks: {postgres: [{name: a, dsn: 'postgresql://h/db'}, {name: a, dsn: 'postgresql://h/db2'}]}", "duplicate target name"),
    ("checks: {redis: [{name: c, url: 'http://x'}]}", "checks.redis[0].url"),
    ("checks: {redis: [{name: c, url: 'redis://x', interval: true}]}", "checks.redis[0].interval"),
    ("checks: {error_rate: [{name: api}]}", "checks.error_rate[0]"),
    ("checks: {error_rate: [{name: api, metrics_url: 'ftp://x/metrics'}]}", "checks.error_rate[0].metrics_url"),
    ("checks: {error_rate: [{name: api, cloudwatch: {load_balancer: nope}}]}", "checks.error_rate[0].cloudwatch.load_balancer"),
    ("checks: {mysql: []}", "checks.mysql"),
    ("alerts: {HighCPU: {threshold: 1.5}}", "alerts.HighCPU.threshold"),
    ("alerts: {HighCPU: {threshold: '180%'}}", "alerts.HighCPU.threshold"),
    ("alerts: {HighCPU: {threshold: lots}}", "alerts.HighCPU.threshold"),
    ("alerts: {HighCPU: {for: soon}}", "alerts.HighCPU.for"),
    ("alerts: {HighCPU: {severity: meh}}", "alerts.HighCPU.severity"),
    ("alerts: {HighGPU: {threshold: 0.5}}", "alerts.HighGPU"),
    ("alerts: {BackupStale: {threshold: 3 hours}}", "alerts.BackupStale.threshold"),
    ("notify: {alertmanager_url: 'alertmanager:9093'}", "notify.alertmanager_url"),
    ("notify: {slack_webhook_url: 'not a url'}", "notify.slack_webhook_url"),
    ("notify: {sns_topic_arn: 'topic'}", "notify.sns_topic_arn"),
    ("backup: {schedule: 'every hour'}", "backup.schedule"),
    ("backup: {schedule: '61 * * * *'}", "backup.schedule"),
    ("backup: {repository: 'ftp://x/y'}", "backup.repository"),
    ("backup: {rpo: 1 hour}", "backup.rpo"),
    ("backup: {retention: {hourly: -1}}", "backup.retention.hourly"),
    ("backup: {postgres: [ghost]}", "backup.postgres[0]"),
    ("backup: {replica: 'file:///x'}", "replica"),
    ("'¡': 1", '"¡": unknown key'),
    ("'': 1", '"": unknown key'),
    ("agent: {'a b': 1}", 'agent."a b": unknown key'),
    ("checks: {postgres: [{name: a, dsn: 'postgresql://h/db', \"\\t\": 1}]}", 'checks.postgres[0]."\\t": unknown key'),
    ("agent: {3: x}", 'agent."3": keys must be strings'),
    ("- just\n- a list", "expected a YAML mapping"),
    ("agent: {name: [unclosed", "not valid YAML"),
    ("", "empty"),
    ("42", "expected a YAML mapping"),
]


@pytest.mark.parametrize(("text", "expected"), BROKEN, ids=[b[1] + f"-{i}" for i, b in enumerate(BROKEN)])
def test_broken_config_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    """Every broken input raises ConfigError whose lines name the offending key."""
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), env={})
    assert any(expected in line for line in err.value.problems), err.value.problems
    for line in err.value.problems:
        assert "Traceback" not in line
        assert "\n" not in line


BROKEN_ENV = [
    ({"OPSAGENT_AGENT__LISTEN": "x"}, "agent.listen"),
    ({"OPSAGENT_CHECKS__POSTGRES": "[{not json"}, "environment"),
    ({"OPSAGENT_CHECKZ__CPU": "{}"}, "OPSAGENT_CHECKZ__CPU"),
    ({"OPSAGENT_BACKUP__RPO": "soon"}, "backup.rpo"),
]


@pytest.mark.parametrize(("env", "expected"), BROKEN_ENV)
def test_broken_environment_names_the_key(env: dict[str, str], expected: str) -> None:
    """A bad environment variable is reported like a bad file entry, by name."""
    with pytest.raises(ConfigError) as err:
        load_config(None, env=env)
    assert any(expected in line for line in err.value.problems), err.value.problems


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    """One run lists every problem, not just the first."""
    text = "agent: {listen: nope}\nnotify: {alertmanager_url: nope}\nbackup: {rpo: soon}\n"
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), env={})
    joined = "\n".join(err.value.problems)
    assert "agent.listen" in joined and "notify.alertmanager_url" in joined and "backup.rpo" in joined


def test_errors_never_echo_a_password(tmp_path: Path) -> None:
    """A DSN with the wrong scheme is shown with its password masked."""
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "checks: {postgres: [{name: a, dsn: 'mysql://u:hunter2-pw@h/db'}]}"), env={})
    assert "hunter2-pw" not in str(err.value)


def test_errors_never_echo_a_secret_pasted_into_another_key(tmp_path: Path) -> None:
    """A token or key-bearing URL that lands in the wrong key is masked in that key's problem, which still names it."""
    text = ("notify: {repeat_interval: 'http://SentryKey-77f1@127.0.0.1:9/1'}\n"
            "alerts: {BackupFailed: Tok-5e2a-9d0c}\n")
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), env={"OPSAGENT_AGENT__ADMIN_TOKEN": "Tok-5e2a-9d0c"})
    joined = "\n".join(err.value.problems)
    assert "SentryKey-77f1" not in joined and "Tok-5e2a-9d0c" not in joined, joined
    assert "notify.repeat_interval: the value is not a duration" in joined
    assert "alerts.BackupFailed: " in joined


def test_cli_exits_2_with_key_names_and_no_traceback(tmp_path: Path) -> None:
    """`opsagent config validate` on a broken file exits 2 and prints the key, never a traceback."""
    path = write(tmp_path, "checks: {cpu: {interval: 5x}}\nagent: {listen: nope}\n")
    proc = subprocess.run([sys.executable, "-m", "opsagent", "config", "validate", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "checks.cpu.interval" in proc.stderr and "agent.listen" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_config_flag_before_or_after_the_command(tmp_path: Path) -> None:
    """--config works before the sub-command as well as after it."""
    path = write(tmp_path, GOOD)
    for argv in (["--config", str(path), "config", "validate"], ["config", "validate", "--config", str(path)]):
        proc = subprocess.run([sys.executable, "-m", "opsagent", *argv], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr


def test_cli_show_prints_secrets_masked(tmp_path: Path) -> None:
    """`config show` prints the effective config with *** for every secret."""
    path = write(tmp_path, GOOD)
    proc = subprocess.run([sys.executable, "-m", "opsagent", "config", "show", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "api-sidecar" in proc.stdout and "***" in proc.stdout
    for secret in ("pg-pass-123", "redis-pass-456", "slack-secret-789", "pd-routing-key-abc"):
        assert secret not in proc.stdout + proc.stderr


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("500ms", 0.5),
                                               ("2d", 172800), (15, 15)])
def test_durations(text: object, seconds: float) -> None:
    """Durations in config units become seconds and format back to the same form."""
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(("text", "ratio"), [("75%", 0.75), (0.75, 0.75), ("0.9", 0.9), (1, 1.0), ("0%", 0.0)])
def test_ratios(text: object, ratio: float) -> None:
    """Ratios are accepted as fractions or percentages."""
    assert parse_ratio(text) == pytest.approx(ratio)


def test_loading_with_an_explicit_environment_never_touches_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other threads (boto3 reading AWS_ENDPOINT_URL) never see the process environment change during a load."""
    import os
    import threading

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    missing: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if os.environ.get("AWS_ENDPOINT_URL") != "http://127.0.0.1:5000":
                missing.append(1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(200):
            load_config(None, env={"OPSAGENT_AGENT__NAME": "x"})
    finally:
        done.set()
        watcher.join()
    assert not missing
