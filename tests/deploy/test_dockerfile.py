"""deploy/docker/Dockerfile against the code: one stage per service that runs a module that exists,
listening where its health check asks, with settings the service really has."""

from __future__ import annotations

import fnmatch

import pytest

from tests.deploy.support import (
    DEFAULT_PORTS,
    METRICS_PORT,
    REPO,
    SERVICES,
    Stage,
    env_problems,
    listening_ports,
    load_settings,
    module_problems,
    parse_dockerfile,
    settings_class,
)

STAGES = parse_dockerfile()


def _stage(name: str) -> Stage:
    assert name in STAGES, f"the Dockerfile has no stage {name!r}; stages: {list(STAGES)}"
    return STAGES[name]


def _health_port(stage: Stage) -> int:
    command = stage.healthcheck()
    assert command is not None, f"stage {stage.name} has no HEALTHCHECK"
    assert command[:3] == ["python", "-m", "cascade.healthcheck"], command
    host, _, port = command[-1].rpartition(":")
    assert host == "127.0.0.1", command
    return int(port)


def test_builder_and_runtime_stages_come_first() -> None:
    assert list(STAGES)[:2] == ["builder", "runtime"]
    assert set(STAGES) == {"builder", "runtime", *SERVICES}


def test_runtime_is_slim_non_root_and_holds_only_the_venv() -> None:
    runtime = _stage("runtime")

    assert runtime.base == "python:3.11-slim"
    assert runtime.last("USER") in ("10001", "10001:10001")
    assert runtime.env()["PYTHONDONTWRITEBYTECODE"] == "1"
    assert runtime.all("COPY") == ["--from=builder /opt/cascade /opt/cascade"]
    installs = [args for args in runtime.all("RUN") if "apt-get" in args or "pip" in args]
    assert installs == [], "the runtime stage installs nothing: build tools stay in the builder"


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_stage_derives_from_runtime(name: str) -> None:
    assert _stage(name).base == "runtime"


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_stage_runs_its_own_module(name: str) -> None:
    command = _stage(name).cmd()

    assert command == ["python", "-m", f"cascade.services.{name}"]
    assert module_problems(command) == []


@pytest.mark.parametrize("name", SERVICES)
def test_health_check_speaks_tls_with_the_services_own_settings(name: str) -> None:
    # With TLS on, a plaintext check fails: it must read this service's CASCADE_<NAME>_TLS_* files.
    command = _stage(name).healthcheck()

    assert command is not None
    assert command[3:5] == ["--tls-of", name], command


def test_the_health_check_module_exists() -> None:
    for name in SERVICES:
        command = _stage(name).healthcheck()
        assert command is not None
        assert module_problems(command[:3]) == []


@pytest.mark.parametrize("name", SERVICES)
def test_health_check_exposed_port_and_settings_agree(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    stage = _stage(name)
    env = stage.env()
    settings = load_settings(name, env, monkeypatch)
    default_port = settings_class(name).model_fields["grpc_port"].default

    assert _health_port(stage) == settings.grpc_port == default_port == DEFAULT_PORTS[name]
    assert stage.exposed() == listening_ports(settings)
    assert settings.metrics_port == METRICS_PORT


@pytest.mark.parametrize("name", SERVICES)
def test_service_stage_env_names_real_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _stage(name).env()
    settings = load_settings(name, env, monkeypatch)

    assert env_problems(name, env) == []
    assert settings.grpc_host == "0.0.0.0", "in a container the server must listen on every interface"
    assert str(settings.data_dir).startswith("/var/lib/cascade/")


def _dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    parts = path.split("/")
    # A pattern matches the path or any directory above it; **/ matches at any depth.
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for line in patterns:
        negate = line.startswith("!")
        pattern = line.removeprefix("!").rstrip("/")
        bare = pattern.removeprefix("**/")
        if any(
            fnmatch.fnmatch(c, pattern) or (bare != pattern and fnmatch.fnmatch(c.split("/")[-1], bare))
            for c in candidates
        ):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_copies_and_drops_the_rest() -> None:
    patterns = _dockerignore()
    copied = [
        args.split()[0]
        for stage in STAGES.values()
        for args in stage.all("COPY")
        if not args.startswith("--from")
    ]

    assert copied, "the builder copies the sources from the context"
    for source in copied:
        assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
        assert not _ignored(source.rstrip("/"), patterns), f"COPY {source} is excluded by .dockerignore"
    unwanted_paths = (
        ".venv",
        ".cascade",
        "tests",
        "bench/.work",
        ".git",
        "shared/__pycache__",
        ".ruff_cache",
    )
    for unwanted in unwanted_paths:
        assert _ignored(unwanted, patterns), f".dockerignore should exclude {unwanted}"
