"""``opsagent discover``: propose a configuration from the ECS task this sidecar runs in.

Every team starts by hand-writing DSNs that the task definition already holds.
Container observers discover containers; this discovers what the app depends
on: it reads the task metadata endpoint v4 (which task, which family and
revision) and ``ecs:DescribeTaskDefinition`` (the app containers'
``environment`` and ``secrets``), and turns ``DATABASE_URL`` / ``PG*`` into
postgres targets, ``REDIS_URL`` into redis targets and database endpoints into
RDS instance ids (``rds:DescribeDBInstances``).

It changes nothing and prints every secret as ``***``. Secret values (ECS
``secrets``) are fetched only with ``--resolve-secrets``
(``secretsmanager:GetSecretValue``), and only to learn hosts and ports from
them: the proposal still masks their passwords, which the agent's container
gets from the same secrets as ``OPSAGENT_*`` variables.
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import yaml

from opsagent import secrets
from opsagent.runtime.runner import describe_error

METADATA_ENV = "ECS_CONTAINER_METADATA_URI_V4"
METADATA_TIMEOUT = 3.0
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

_POSTGRES_VAR = re.compile(r"^(?:[A-Z0-9_]+_)?(?:DATABASE|POSTGRES|PG|DB)_URL$|^DATABASE_URL$")
_REDIS_VAR = re.compile(r"^(?:[A-Z0-9_]+_)?REDIS_URL$")
_PG_PARTS = ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE")
_SECRET_PLACEHOLDER = "\x00secret\x00"  # a secret value we were not allowed (or not able) to read


class DiscoverError(Exception):
    """Discovery cannot start or finish; the message says what is missing."""


@dataclass(frozen=True)
class Variable:
    """One environment variable of an app container, as the task definition declares it."""

    container: str
    name: str
    value: str  # _SECRET_PLACEHOLDER when it is an unresolved secret
    secret_from: str | None = None  # the secret's ARN (ECS ``secrets[].valueFrom``)


@dataclass
class Proposal:
    """What discovery found, and the notes a human should read before using it."""

    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    task: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config, "notes": self.notes, "task": self.task}

    def to_yaml(self) -> str:
        head = ["# Proposed by `opsagent discover` (review it; nothing was changed)."]
        head += [f"# task: {k}={v}" for k, v in self.task.items()]
        head += [f"# note: {n}" for n in self.notes]
        return "\n".join(head) + "\n" + yaml.safe_dump(self.config, sort_keys=False, default_flow_style=False)


# -- reading the task ---------------------------------------------------------------------------------


def read_metadata(env: Mapping[str, str]) -> tuple[dict[str, Any], str | None]:
    """The task metadata (``$URI/task``) and this container's own name (``$URI``)."""
    base = env.get(METADATA_ENV)
    if not base:
        raise DiscoverError(f"not running inside ECS: {METADATA_ENV} is not set (discover reads the task metadata "
                            "endpoint v4 and the task definition)")
    task = _get_json(base.rstrip("/") + "/task")
    try:
        own = _get_json(base.rstrip("/"))
        own_name = str(own.get("Name")) if isinstance(own, dict) and own.get("Name") else None
    except DiscoverError:
        own_name = None
    if not isinstance(task, dict) or not task.get("Family"):
        raise DiscoverError("the task metadata endpoint answered without a task Family")
    return task, own_name


def _get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=METADATA_TIMEOUT) as response:
            return json.loads(response.read(4 * 1024 * 1024))
    except (OSError, ValueError) as exc:
        raise DiscoverError(f"cannot read the task metadata endpoint {secrets.mask_url(url)}: "
                            f"{describe_error(exc)}") from None


def _region_of(task: Mapping[str, Any]) -> str | None:
    parts = str(task.get("TaskARN") or "").split(":")
    return parts[3] if len(parts) > 3 and parts[3] else None


def task_variables(task: Mapping[str, Any], own_name: str | None, resolve: bool) -> tuple[list[Variable], list[str]]:
    """Every app container's environment and secrets (the sidecar's own container left out)."""
    from opsagent import aws

    region = _region_of(task)
    family, revision = str(task["Family"]), str(task.get("Revision") or "")
    ecs = aws.client("ecs", region, timeout=10.0)
    definition = ecs.describe_task_definition(taskDefinition=f"{family}:{revision}" if revision else family)
    notes: list[str] = []
    out: list[Variable] = []
    sm = aws.client("secretsmanager", region, timeout=10.0) if resolve else None
    for container in definition["taskDefinition"].get("containerDefinitions", []):
        name = str(container.get("name"))
        if name == own_name:
            continue
        for item in container.get("environment", []) or []:
            out.append(Variable(name, str(item.get("name")), str(item.get("value", ""))))
        for item in container.get("secrets", []) or []:
            arn = str(item.get("valueFrom", ""))
            value = _SECRET_PLACEHOLDER
            if sm is not None:
                try:
                    value = _resolve(sm, arn)
                except Exception as exc:  # noqa: BLE001 - one unreadable secret leaves a placeholder
                    notes.append(f"secret {item.get('name')} of {name} not read: {describe_error(exc)}")
            out.append(Variable(name, str(item.get("name")), value, secret_from=arn))
    return out, notes


def _resolve(sm: Any, value_from: str) -> str:
    """A Secrets Manager ``valueFrom``: the ARN, optionally ``:json-key:version-stage:version-id``."""
    if ":secretsmanager:" not in value_from:
        raise DiscoverError("only Secrets Manager secrets are resolved (this one is an SSM parameter)")
    parts = value_from.split(":")
    arn, json_key = ":".join(parts[:7]), parts[7] if len(parts) > 7 else ""
    value = str(sm.get_secret_value(SecretId=arn)["SecretString"])
    if json_key:
        secrets.register([value])  # the whole JSON document is secret; only its key is used
        value = str(json.loads(value)[json_key])
    # A URL's password is the secret; its host is what resolving is for. Anything else is secret whole.
    secrets.register([secrets.url_password(value) if "://" in value else value])
    return value


# -- turning variables into a configuration -----------------------------------------------------------


def _target_name(container: str, var: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.\-]", "-", (var.lower().removesuffix("_url") or container))[:50] or "main"
    base = {"database": "main", "redis": "cache", "pg": "main"}.get(base, base)
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name


def _masked(url: str) -> str:
    """The URL as the proposal shows it: a password (or a whole unread secret) as ``***``."""
    return "***" if url == _SECRET_PLACEHOLDER else secrets.mask_url(url)


def _pg_parts_url(values: Mapping[str, Variable]) -> str | None:
    """A DSN from libpq's PG* variables of one container (PGPASSWORD always shown as ``***``)."""
    if "PGHOST" not in values:
        return None

    def part(key: str, default: str) -> str:
        v = values.get(key)
        return default if v is None else ("***" if v.value == _SECRET_PLACEHOLDER else v.value)

    user = quote(part("PGUSER", "postgres"), safe="*")
    auth = f"{user}:***@" if "PGPASSWORD" in values else f"{user}@"
    return f"postgresql://{auth}{part('PGHOST', 'localhost')}:{part('PGPORT', '5432')}/{part('PGDATABASE', 'postgres')}"


def propose(task: Mapping[str, Any], variables: list[Variable], rds_lookup: Any = None) -> Proposal:
    """A configuration for this task's dependencies; every secret masked."""
    family = str(task.get("Family"))
    notes: list[str] = []
    taken_pg: set[str] = set()
    taken_redis: set[str] = set()
    postgres: list[dict[str, Any]] = []
    redis: list[dict[str, Any]] = []
    hosts: list[str] = []
    seen_urls: set[str] = set()
    by_container: dict[str, dict[str, Variable]] = {}
    for v in variables:
        by_container.setdefault(v.container, {})[v.name] = v
    for container, values in by_container.items():
        for v in values.values():
            is_pg = _POSTGRES_VAR.match(v.name) and (v.value == _SECRET_PLACEHOLDER
                                                     or v.value.startswith(("postgres://", "postgresql://")))
            is_redis = _REDIS_VAR.match(v.name) and (v.value == _SECRET_PLACEHOLDER
                                                     or v.value.startswith(("redis://", "rediss://")))
            if not (is_pg or is_redis):
                continue
            shown = _masked(v.value)
            if shown == "***":
                shown = ("postgresql://" if is_pg else "redis://") + "***"
                notes.append(f"{v.name} of container {container} is a secret ({v.secret_from}); run with "
                             "--resolve-secrets to learn its host, and feed the agent the same secret")
            elif v.secret_from:
                notes.append(f"{v.name} of container {container} comes from secret {v.secret_from}")
            if shown in seen_urls:
                continue
            seen_urls.add(shown)
            if is_pg:
                postgres.append({"name": _target_name(container, v.name, taken_pg), "dsn": shown})
                _add_host(hosts, v.value)
            else:
                redis.append({"name": _target_name(container, v.name, taken_redis), "url": shown})
        parts = _pg_parts_url(values)
        if parts is not None and parts not in seen_urls:
            seen_urls.add(parts)
            postgres.append({"name": _target_name(container, "pg", taken_pg), "dsn": parts})
            host = values["PGHOST"].value
            if host != _SECRET_PLACEHOLDER:
                hosts.append(host)
    config: dict[str, Any] = {"agent": {"name": family}}
    region = _region_of(task)
    if region:
        config["agent"]["region"] = region
    checks: dict[str, Any] = {"cpu": {"interval": "15s"}, "memory": {"interval": "15s"}}
    if postgres:
        checks["postgres"] = postgres
        if not postgres[0]["dsn"].endswith("://***"):
            # The fleet of this service's tasks elects one leader on the first database (SPEC 9.6).
            config["agent"]["fleet_lock_dsn"] = postgres[0]["dsn"]
    if redis:
        checks["redis"] = redis
    config["checks"] = checks
    if rds_lookup is not None and hosts:
        instances, rds_notes = rds_lookup(hosts)
        notes.extend(rds_notes)
        if instances:
            config["backup"] = {"rds_instances": instances}
    if not postgres and not redis:
        notes.append("no DATABASE_URL, PG* or REDIS_URL found in the app containers")
    return Proposal(config=config, notes=notes,
                    task={"family": family, "revision": str(task.get("Revision", "")), "region": region or ""})


def _add_host(hosts: list[str], url: str) -> None:
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return
    if host:
        hosts.append(host)


def rds_instances_for(region: str | None) -> Any:
    """A lookup from endpoint host names to RDS instance ids (``rds:DescribeDBInstances``)."""
    def lookup(hosts: list[str]) -> tuple[list[str], list[str]]:
        from opsagent import aws

        by_address: dict[str, str] = {}
        try:
            paginator = aws.client("rds", region, timeout=10.0).get_paginator("describe_db_instances")
            for page in paginator.paginate():
                for db in page.get("DBInstances", []):
                    address = str((db.get("Endpoint") or {}).get("Address", "")).lower()
                    by_address.setdefault(address, str(db["DBInstanceIdentifier"]))
        except Exception as exc:  # noqa: BLE001 - no RDS permission: the targets are still proposed
            return [], [f"RDS instances not looked up: {describe_error(exc)}"]
        found: list[str] = []
        notes: list[str] = []
        for host in dict.fromkeys(h.lower() for h in hosts):
            if host not in by_address:
                notes.append(f"{host} is not the endpoint of an RDS instance in this account and region")
            elif by_address[host] not in found:
                found.append(by_address[host])
        return found, notes

    return lookup


def main(as_json: bool, resolve_secrets: bool, env: Mapping[str, str] | None = None) -> int:
    """The command: 0 with a proposal on stdout, 1 when the task cannot be read."""
    env = os.environ if env is None else env
    try:
        task, own = read_metadata(env)
        variables, notes = task_variables(task, own, resolve_secrets)
        proposal = propose(task, variables, rds_instances_for(_region_of(task)))
    except DiscoverError as exc:
        print(f"opsagent discover: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - AWS errors (permissions, no such task definition) are reported
        print(f"opsagent discover: {describe_error(exc)}", file=sys.stderr)
        return EXIT_FAILED
    proposal.notes[:0] = notes
    text = json.dumps(proposal.to_json(), indent=1) if as_json else proposal.to_yaml()
    print(secrets.scrub(text), end="" if text.endswith("\n") else "\n")
    return EXIT_OK
