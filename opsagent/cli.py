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
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from opsagent import __version__
from opsagent.config import ConfigError, Settings, load_config, resolve_config_path

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"opsagent: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _config_opt(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--config", "-c", metavar="FILE", default=default,
                        help="config file (default: $OPSAGENT_CONFIG, then ./opsagent.yaml)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="opsagent", description="Operational monitoring and disaster-recovery agent.")
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
    _config_opt(rsub.add_parser("export", help="print alerting rules for the configured alarms"), argparse.SUPPRESS)

    p = command("runbook", "list runbooks, or print one")
    p.add_argument("alert", nargs="?", metavar="ALERT")
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
        return cmd_check(settings, args.names, args.json)
    if cmd == "config":
        if args.action == "show":
            import yaml

            sys.stdout.write(yaml.safe_dump(settings.redacted(), sort_keys=False))
        else:
            print("configuration is valid")
        return EXIT_OK
    if cmd == "rules":
        from opsagent.rules import render_rules

        sys.stdout.write(render_rules(settings))
        return EXIT_OK
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


def cmd_check(settings: Settings, names: list[str], as_json: bool) -> int:
    """One round of every (or the named) check, concurrently, each within its deadline."""
    from opsagent.alerts.verdict import verdict
    from opsagent.runtime.agent import build_runners

    runners = build_runners(settings, names or None)
    if names and not runners:
        known = ", ".join(f"{k}:{t.name}" for k, t in settings.checks.targets()) or "none"
        print(f"opsagent: no configured target matches {' '.join(names)} (known: {known})", file=sys.stderr)
        return EXIT_USAGE
    with ThreadPoolExecutor(max_workers=max(1, min(32, len(runners)))) as pool:
        results = list(pool.map(lambda r: r.run(), runners.values()))
    for runner in runners.values():
        runner.close()
    rows = []
    failed = False
    for result in results:
        v = verdict(settings, result)
        failed |= (not result.up) or bool(v.breached)
        rows.append({"check": result.check, "target": result.target, "value": result.value, "threshold": v.threshold,
                     "alert": v.alert, "state": v.state, "up": result.up, "error": result.error})
    if as_json:
        print(json.dumps(rows))
    else:
        _print_table(rows)
    return EXIT_FAIL if failed else EXIT_OK


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
    widths = [max(len(h), *(len(row[i]) for row in table)) if table else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


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
