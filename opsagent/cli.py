"""The command line: parse, load config, call, print, exit status (SPEC §4).

Thin on purpose: every command delegates to the module that does the work.
``--config`` is accepted before and after the sub-command. Exit 2 is reserved
for usage and configuration errors, which are printed one line per problem and
never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from opsagent import __version__
from opsagent.config import ConfigError, Settings, load_config, resolve_config_path

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

EPILOG = """\
examples:
  opsagent run --config /etc/opsagent.yaml      the daemon (metrics, status page, alerts, backups)
  opsagent check                                every check once, as a table
  opsagent check postgres:main --json           one target, as JSON
  opsagent config show                          the effective config, secrets as ***
  opsagent backup run && opsagent backup list   one backup now, then what the repository holds
  opsagent restore ID --target postgresql://app@scratch:5432/app
  opsagent runbook HighCPU                      what to do when HighCPU pages
  source <(opsagent completion bash)            tab completion in this shell

exit status:
  0  success (check: everything within thresholds; backup verify: intact)
  1  a check breached or a target is down; a backup, restore, verify or drill failed
  2  usage or configuration error (one line per problem, naming the key); unknown backup id or runbook

config: --config FILE (before or after the command), else $OPSAGENT_CONFIG, else ./opsagent.yaml;
every key can be overridden by OPSAGENT_<SECTION>__<KEY> environment variables.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"opsagent: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _config_opt(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--config", "-c", metavar="FILE", default=default,
                        help="config file (default: $OPSAGENT_CONFIG, then ./opsagent.yaml)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="opsagent", description="Operational monitoring and disaster-recovery agent.",
                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"opsagent {__version__}")
    _config_opt(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _config_opt(p, argparse.SUPPRESS)
        return p

    command("run", "run the daemon until SIGTERM/SIGINT")
    p = command("check", "run every configured check once and print the results")
    p.add_argument("names", nargs="*", metavar="NAME", help="only targets with this name, kind or kind:name")
    p.add_argument("--json", action="store_true", help="print one JSON list")
    p.add_argument("--sample", metavar="DURATION", default=None,
                   help="how long rate checks (error_rate) wait for a second read (default 5s; 0s: report the "
                        "lifetime ratio, marked basis lifetime)")

    p = command("config", "validate or show the configuration")
    csub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    for action, text in (("validate", "check the configuration; exit 2 with one line per problem"),
                         ("show", "print the effective configuration, secrets as ***")):
        _config_opt(csub.add_parser(action, help=text), argparse.SUPPRESS)

    p = command("backup", "take, list or verify backups")
    bsub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    b = bsub.add_parser("run", help="back up everything backup names now, then replicate")
    _config_opt(b, argparse.SUPPRESS)
    b.add_argument("--json", action="store_true")
    b = bsub.add_parser("list", help="list complete backups")
    _config_opt(b, argparse.SUPPRESS)
    b.add_argument("--replica", action="store_true", help="list the replica repository instead")
    b.add_argument("--json", action="store_true")
    b = bsub.add_parser("verify", help="re-read a backup and check every checksum")
    _config_opt(b, argparse.SUPPRESS)
    b.add_argument("backup_id", metavar="ID")

    p = command("restore", "restore a pg_dump backup into a database")
    p.add_argument("backup_id", metavar="ID")
    p.add_argument("--target", required=True, metavar="DSN", help="database to restore into")
    p.add_argument("--force", action="store_true", help="allow a DSN that is a configured target")
    p.add_argument("--from", dest="source", choices=["primary", "replica"], default="auto",
                   help="which copy to read (default: primary, falling back to the replica copy)")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="parallel pg_restore (stages the archive locally)")
    p.add_argument("--stage-dir", default=None, metavar="DIR", help="where --jobs stages the archive")

    p = command("drill", "restore the newest replica backup into drill_dsn, verify, time it")
    p.add_argument("--json", action="store_true")

    p = command("audit", "the backup posture: one row per control and target (exit 1 if any fails)")
    p.add_argument("--json", action="store_true", help="print one JSON list of {control, target, passed, detail}")

    p = command("rules", "Prometheus alerting rules")
    rsub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    r = rsub.add_parser("export", help="print alerting rules for the configured alarms")
    _config_opt(r, argparse.SUPPRESS)
    r.add_argument("--job", default="opsagent", metavar="NAME", help="the agent's scrape job for OpsagentDown")
    r.add_argument("--down-for", default="1m", metavar="DURATION", help="OpsagentDown's `for` (default 1m)")
    r.add_argument("--only", action="append", default=[], metavar="ALERT",
                   help="only this alert (repeatable), e.g. --only OpsagentDown")

    p = command("runbook", "list runbooks, or print one")
    alert = p.add_argument("alert", nargs="?", metavar="ALERT")

    p = command("iam-policy", "print the least-privilege IAM policy for this config (task role, or --execution-role)")
    p.add_argument("--account", metavar="ID", help="the AWS account id the ARNs are built in (12 digits)")
    p.add_argument("--partition", default="aws", help="ARN partition (aws, aws-cn, aws-us-gov)")
    p.add_argument("--template", metavar="FILE", default="deploy/iam/opsagent-policy.json",
                   help="the shipped policy naming every action (default: %(default)s)")
    p.add_argument("--kms-key-arn", action="append", default=[], metavar="ALIAS=ARN",
                   help="the key ARN of a backup key the config names by alias (repeatable)")
    p.add_argument("--execution-role", action="store_true",
                   help="the execution role's policy for --task-definition's secrets[].valueFrom instead")
    p.add_argument("--task-definition", metavar="FILE", default="deploy/ecs/task-definition.json",
                   help="task definition JSON for --execution-role (default: %(default)s)")

    from opsagent.completion import RUNBOOK_COMPLETION, SHELLS, install_hint

    alert.complete = RUNBOOK_COMPLETION  # type: ignore[attr-defined]  # shtab reads this attribute off the action

    p = sub.add_parser("completion", help="print a shell completion script",
                       description="print a shell completion script (bash or zsh) for opsagent",
                       epilog="install:\n" + "\n".join(f"  {install_hint(s)}" for s in SHELLS),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shell", choices=SHELLS)

    p = command("silence", "hold a target's pages for a while (and silence it in Alertmanager when configured)")
    p.add_argument("--target", required=True, metavar="NAME", help="the target whose alerts to hold")
    p.add_argument("--for", dest="duration", required=True, metavar="DURATION", help="how long, such as 2h")
    p.add_argument("--comment", help="why (shown on the status page and in Alertmanager)")
    p.add_argument("--check", metavar="KIND", help="only alerts of this check kind")
    p.add_argument("--json", action="store_true", help="print the silence as JSON")

    p = command("discover", "inside ECS: propose a config from the task definition (changes nothing)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--resolve-secrets", action="store_true",
                   help="read the task's Secrets Manager secrets to learn hosts (still printed as ***)")
    return parser


def _load(args: argparse.Namespace) -> Settings:
    path = resolve_config_path(args.config)
    return load_config(path)


def _print_config_error(exc: ConfigError) -> int:
    print("opsagent: invalid configuration:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command == "runbook":
        return cmd_runbook(args.alert)
    if args.command == "completion":
        from opsagent.completion import completion_script

        sys.stdout.write(completion_script(build_parser(), args.shell))
        return EXIT_OK
    if args.command == "discover":  # needs no configuration: it proposes one
        from opsagent.discover import main as discover

        return discover(args.json, args.resolve_secrets)
    try:
        settings = _load(args)
    except ConfigError as exc:
        return _print_config_error(exc)

    from opsagent.telemetry import logging as agent_logging

    agent_logging.configure(settings.agent.log_level)
    try:
        return _dispatch(args, settings)
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    cmd = args.command
    if cmd == "run":
        from opsagent.runtime.agent import run_forever
        from opsagent.telemetry import sentry

        sentry.init(settings)
        return run_forever(settings)
    if cmd == "check":
        return cmd_check(settings, args.names, args.json, args.sample)
    if cmd == "config":
        if args.action == "show":
            import yaml

            sys.stdout.write(yaml.safe_dump(settings.redacted(), sort_keys=False))
        else:
            print("configuration is valid")
        return EXIT_OK
    if cmd == "iam-policy":
        return cmd_iam_policy(settings, args)
    if cmd == "rules":
        from opsagent.rules import export_options, render_rules

        try:
            options = export_options(job=args.job, down_for=args.down_for, only=args.only)
        except ValueError as exc:
            print(f"opsagent: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        sys.stdout.write(render_rules(settings, options))
        return EXIT_OK
    if cmd == "silence":
        from opsagent.silence import cmd_silence

        return cmd_silence(settings, args.target, args.duration, args.comment, args.check, args.json)
    from opsagent.backup import commands

    if cmd == "backup":
        if args.action == "run":
            return commands.backup_run(settings, json_out=args.json)
        if args.action == "list":
            return commands.backup_list(settings, replica=args.replica, json_out=args.json)
        return commands.backup_verify(settings, args.backup_id)
    if cmd == "restore":
        return commands.restore(settings, args.backup_id, args.target, force=args.force, source=args.source,
                                jobs=args.jobs, stage_dir=args.stage_dir)
    if cmd == "drill":
        return commands.drill(settings, json_out=args.json)
    if cmd == "audit":
        from opsagent.backup.audit import audit_command

        return audit_command(settings, json_out=args.json)
    raise AssertionError(cmd)


def cmd_check(settings: Settings, names: list[str], as_json: bool, sample: str | None = None) -> int:
    """One round of every (or the named) check, concurrently, each within its deadline; rates sampled."""
    from opsagent.runtime.agent import build_runners
    from opsagent.runtime.oneshot import DEFAULT_SAMPLE_SECONDS, check_row, sample_round
    from opsagent.units import parse_duration

    try:
        sample_seconds = DEFAULT_SAMPLE_SECONDS if sample is None else parse_duration(sample)
    except ValueError as exc:
        print(f"opsagent: error: --sample {exc}", file=sys.stderr)
        return EXIT_USAGE

    runners = build_runners(settings, names or None)
    if names and not runners:
        known = ", ".join(f"{k}:{t.name}" for k, t in settings.checks.targets()) or "none"
        print(f"opsagent: no configured target matches {' '.join(names)} (known: {known})", file=sys.stderr)
        return EXIT_USAGE
    try:
        results = sample_round(runners, sample_seconds)
    finally:
        for runner in runners.values():
            runner.close()
    checked = [check_row(settings, result) for result in results]
    rows = [row.to_json() for row in checked]
    if as_json:
        print(json.dumps(rows))
    else:
        _print_table(rows)
    return EXIT_FAIL if any(row.failed for row in checked) else EXIT_OK


def _human(value: Any, alert: str | None) -> str:
    """A value as its alarm writes it: ratios as percentages, durations in config units."""
    from opsagent.alerts.catalog import ALARMS, ValueKind
    from opsagent.units import format_duration

    if value is None:
        return "-"
    if not isinstance(value, (int, float)):
        return str(value)
    kind = ALARMS[alert].kind if alert in ALARMS else None
    if kind is ValueKind.RATIO:
        return f"{value * 100:.2f}%"
    if kind is ValueKind.DURATION:
        return format_duration(round(float(value)))
    return f"{value:.4g}"


def _print_table(rows: list[dict[str, Any]]) -> None:
    from opsagent.alerts.catalog import alarms_for_check

    def unit_of(row: dict[str, Any]) -> str | None:
        """The alarm whose units the numbers are in (a down row names TargetDown, but the threshold is the kind's)."""
        specs = alarms_for_check(row["check"])
        return specs[0].name if row["state"] == "down" and specs else row["alert"]

    headers = ["CHECK", "TARGET", "VALUE", "THRESHOLD", "STATE", "ALERT", "ERROR"]
    table = [[r["check"], r["target"], _human(r["value"], unit_of(r)), _human(r["threshold"], unit_of(r)),
              r["state"], r["alert"] or "-", r["error"] or ""] for r in rows]
    if any(r.get("basis") for r in rows):  # rate kinds: say whether VALUE is a sampled window or a lifetime ratio
        headers.insert(3, "BASIS")
        for line, r in zip(table, rows, strict=True):
            line.insert(3, r.get("basis") or "-")
    widths = [max(len(h), *(len(row[i]) for row in table)) if table else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def cmd_iam_policy(settings: Settings, args: argparse.Namespace) -> int:
    from opsagent import iam

    def read_json(path: str, what: str) -> Any:
        try:
            return json.loads(open(path, encoding="utf-8").read())
        except (OSError, ValueError) as exc:
            raise iam.PolicyError(f"{path}: cannot read the {what} ({exc.__class__.__name__}: {exc})") from None

    try:
        if args.execution_role:
            policy = iam.execution_policy(read_json(args.task_definition, "task definition"))
        else:
            if not args.account:
                raise iam.PolicyError("--account is required: the ARNs are built in that account")
            key_arns = dict(pair.partition("=")[::2] for pair in args.kms_key_arn)
            policy = iam.task_policy(settings, args.account, read_json(args.template, "policy template"), args.partition,
                                     key_arns)
    except iam.PolicyError as exc:
        print(f"opsagent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(iam.render(policy))
    return EXIT_OK


def cmd_runbook(alert: str | None) -> int:
    from opsagent.runbooks import list_runbooks, read_runbook

    if alert is None:
        for name in list_runbooks():
            print(name)
        return EXIT_OK
    try:
        sys.stdout.write(read_runbook(alert))
    except KeyError:
        print(f"opsagent: no runbook for {alert!r}; known: {', '.join(list_runbooks())}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
