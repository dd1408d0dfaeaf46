"""The Docker deployment, checked without Docker: docker-compose.yml against the Compose specification's
schema and the promises it makes (migrate first, supervised services, volumes, secrets from .env, a GPU),
and the Dockerfile's api and worker targets (slim, non-root, built from pinned versions)."""

from __future__ import annotations

import json
import re
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
# Vendored with its license note beside it (tests/data/compose-spec.NOTICE).
COMPOSE_SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
TRAINING_STACK = {"torch", "transformers", "peft", "bitsandbytes", "accelerate"}


@cache
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return document


def service(name: str) -> dict[str, Any]:
    definition: dict[str, Any] = compose()["services"][name]
    return definition


def mount_targets(name: str) -> dict[str, str]:
    """A service's mounts, target -> named volume."""
    mounts = (volume.split(":") for volume in service(name).get("volumes", []))
    return {parts[1]: parts[0] for parts in mounts}


def test_the_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = [
        f"{list(e.absolute_path)}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(compose())
    ]
    assert errors == []


def test_the_schema_catches_a_broken_compose_file() -> None:
    """The validation above is not vacuous: the schema refuses what Compose would refuse."""
    broken = {**compose(), "services": {**compose()["services"], "api": {**service("api"), "restart": 3}}}
    assert not jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text())).is_valid(broken)


def test_migrations_run_once_before_the_api_and_the_workers() -> None:
    assert service("migrate")["command"] == ["loraq-migrate"]
    for name in ("api", "worker"):
        assert service(name)["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        for dependency in ("postgres", "redis"):
            assert service(name)["depends_on"][dependency] == {"condition": "service_healthy"}


@pytest.mark.parametrize("name", ["postgres", "redis", "api", "worker"])
def test_long_running_services_restart_and_report_health(name: str) -> None:
    assert service(name)["restart"] in {"always", "unless-stopped"}
    assert service(name)["healthcheck"]["test"]


def test_the_api_is_healthy_when_ready_without_curl() -> None:
    probe = " ".join(service("api")["healthcheck"]["test"])
    assert "/readyz" in probe and probe.startswith("CMD python -c") and "curl" not in probe


def test_state_lives_in_named_volumes() -> None:
    declared = set(compose()["volumes"])
    assert mount_targets("postgres")["/var/lib/postgresql/data"] in declared
    # Redis's append-only file is only worth something on a volume.
    assert "--appendonly yes" in " ".join(service("redis")["command"])
    assert mount_targets("redis")["/data"] in declared
    worker = mount_targets("worker")
    # LORAQ_HOME (admin key, artifacts), the base models, and the Hugging Face cache.
    assert {"/data", "/data/models", "/cache/huggingface"} <= set(worker)
    assert set(worker.values()) <= declared
    assert mount_targets("api")["/data"] == worker["/data"]
    assert {"LORAQ_HOME": "/data", "HF_HOME": "/cache/huggingface"}.items() <= dockerfile_env(
        "runtime"
    ).items()


def test_secrets_come_from_the_env_file() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    example = dict(
        line.split("=", 1)
        for line in (REPO / ".env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    referenced = set(re.findall(r"(?<!\$)\$\{(\w+)", text))
    assert {"POSTGRES_PASSWORD", "REDIS_PASSWORD"} <= referenced
    assert referenced <= set(example), "every variable the compose file reads is documented in .env.example"
    assert service("postgres")["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert all(value not in text for key, value in example.items() if key.endswith("PASSWORD"))


def test_the_worker_reserves_a_gpu() -> None:
    [device] = service("worker")["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "deploy" not in service("api")


# --- the Dockerfile -------------------------------------------------------------------------------------


def dockerfile() -> tuple[dict[str, str], dict[str, list[tuple[str, str]]]]:
    """The global ARG defaults, and each stage's instructions (keyword, arguments) by stage name."""
    text = re.sub(r"\\\n", "", (REPO / "Dockerfile").read_text())
    args: dict[str, str] = {}
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in (line.strip() for line in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert match, line
            current = stages[match[2] or f"stage-{len(stages)}"] = [("FROM", match[1])]
        elif current is not None:
            current.append((keyword, rest))
        elif keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args, stages


def stage_chain(name: str) -> list[str]:
    """The stage and the stages it builds on, ending with the image it starts from."""
    args, stages = dockerfile()
    chain = [name]
    while chain[-1] in stages:
        base = stages[chain[-1]][0][1]
        chain.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], base))
    return chain


def stage_instructions(name: str) -> list[tuple[str, str]]:
    """Everything the stage runs, its bases' instructions first."""
    _, stages = dockerfile()
    return [step for stage in reversed(stage_chain(name)[:-1]) for step in stages[stage][1:]]


def dockerfile_env(name: str) -> dict[str, str]:
    pairs = (
        re.findall(r"(\w+)=(\S+)", rest) for keyword, rest in stage_instructions(name) if keyword == "ENV"
    )
    return {key: value for found in pairs for key, value in found}


@pytest.mark.parametrize("target", ["api", "worker"])
def test_each_image_is_a_slim_python_run_by_an_unprivileged_user(target: str) -> None:
    assert compose()["services"][target]["build"]["target"] == target
    base = stage_chain(target)[-1]
    # torch's CUDA wheel brings its own CUDA libraries: a CUDA base image would be a second copy.
    assert base.startswith("python:") and "slim" in base, base
    users = [rest for keyword, rest in stage_instructions(target) if keyword == "USER"]
    assert users and users[-1] not in {"root", "0"} and not users[-1].startswith("0:")


@pytest.mark.parametrize("target", ["api", "worker"])
def test_each_image_installs_pinned_dependencies_before_the_code(target: str) -> None:
    steps = stage_instructions(target)
    installs = [i for i, (keyword, rest) in enumerate(steps) if keyword == "RUN" and "pip install" in rest]
    code = [i for i, (keyword, rest) in enumerate(steps) if keyword == "COPY" and "--from=wheel" in rest]
    assert installs and code
    dependencies = [i for i in installs if "-c constraints.txt" in steps[i][1]]
    assert dependencies and max(dependencies) < min(code), "a code change must not reinstall dependencies"
    for i in installs:
        assert "-c constraints.txt" in steps[i][1] or "--no-deps" in steps[i][1], steps[i]
    # No editable install, and no source tree: the image runs the built wheel.
    assert not any(re.search(r"pip install .*(-e |--editable)", rest) for _, rest in steps)
    copied = [rest.split() for keyword, rest in steps if keyword == "COPY" and "--from" not in rest]
    assert not any({"loraq", "api", "worker", "."} & set(words[:-1]) for words in copied), copied


def test_no_stage_starts_from_a_cuda_image() -> None:
    _, stages = dockerfile()
    assert all("cuda" not in stage_chain(name)[-1] for name in stages)


# --- constraints.txt ------------------------------------------------------------------------------------


def constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    return pins


def project_requirements(*extras: str) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = project["dependencies"] + [r for extra in extras for r in project["optional-dependencies"][extra]]
    return [Requirement(r) for r in names]


def installed_closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution these requirements pull in, as this environment resolved them."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(r, "") for r in requirements]
    while todo:
        requirement, parent_extra = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": parent_extra}):
            continue
        name = canonicalize_name(requirement.name)
        if (name, frozenset(requirement.extras)) in seen:
            continue
        seen.add((name, frozenset(requirement.extras)))
        for child in metadata.requires(name) or []:
            todo += [(Requirement(child), extra) for extra in {"", *requirement.extras}]
    return {name for name, _ in seen}


def test_constraints_pin_the_known_good_versions() -> None:
    pins = constraints()
    known = {"torch": "2.13.0", "transformers": "5.23.0", "peft": "0.21.2", "bitsandbytes": "0.50.2"}
    assert {**known, "accelerate": "1.15.0"}.items() <= pins.items()
    # What the images install matches what the tests run with.
    for name, version in pins.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # only in the CUDA build's closure
        assert installed.split("+")[0] == version, (name, installed, version)


def test_constraints_pin_everything_the_images_install() -> None:
    pins = set(constraints())
    assert installed_closure(project_requirements("worker")) - pins == set()


def test_the_api_image_has_no_training_stack() -> None:
    assert installed_closure(project_requirements()) & TRAINING_STACK == set()
