"""deploy/kubernetes: manifests valid against the Kubernetes schema, wired to the agent's contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from opsagent.config import load_config

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.37.0"


def manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            out.append((path.name, doc))
    return out


def by_kind(kind: str) -> dict[str, Any]:
    [doc] = [d for _, d in manifests() if d["kind"] == kind]
    return doc


@pytest.mark.parametrize(("name", "doc"), manifests(), ids=[n for n, _ in manifests()])
def test_every_manifest_is_valid_kubernetes(name: str, doc: dict[str, Any]) -> None:
    """Each manifest passes strict validation against the Kubernetes API schema (unknown fields are errors)."""
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    """`kubectl apply -k` applies every manifest of the directory."""
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted({n for n, _ in manifests()})


def test_deployment_probes_config_secret_and_scrape_annotations() -> None:
    """Liveness on /healthz, readiness on /readyz, config from the ConfigMap, secrets from the Secret, scrape annotations, clean stop."""
    deployment = by_kind("Deployment")
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"name": "OPSAGENT_CONFIG", "value": "/etc/opsagent/opsagent.yaml"} in container["env"]
    assert container["envFrom"] == [{"secretRef": {"name": by_kind("Secret")["metadata"]["name"]}}]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == by_kind("ConfigMap")["metadata"]["name"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9108"
    assert pod["spec"]["terminationGracePeriodSeconds"] > 25
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_configmap_holds_a_valid_config_without_secrets(tmp_path: Path) -> None:
    """The ConfigMap's opsagent.yaml validates, listens where the probes look, and has no password; the Secret's variables override it."""
    text = by_kind("ConfigMap")["data"]["opsagent.yaml"]
    path = tmp_path / "opsagent.yaml"
    path.write_text(text)
    settings = load_config(path, env={})
    assert settings.agent.listen_port == 9108
    assert "REPLACE_ME" not in text and ":REPLACE" not in text
    env = dict(by_kind("Secret")["stringData"])
    with_secrets = load_config(path, env=env)
    assert with_secrets.checks.postgres[0].connect == "per_run"
    assert "REPLACE_ME" in with_secrets.checks.rabbitmq[0].url.get_secret_value()
    assert "REPLACE_ME" not in str(with_secrets.redacted())
