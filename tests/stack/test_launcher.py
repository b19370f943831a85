"""The stack API without a running stack: the environment each service gets, and status."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cascade.stack import DEFAULT_METRICS_PORTS, DEFAULT_PORTS, SERVICES, Stack, StackConfig, StackError

PORTS = {name: 40000 + index for index, name in enumerate(SERVICES)}


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    config = StackConfig(
        home=tmp_path / "home", kafka_port=40100, controller_port=40101, topic_prefix="t", ports=PORTS
    )
    return Stack(config, environ={})


@pytest.mark.parametrize("name", SERVICES)
def test_service_env_uses_the_service_prefix_and_stack_settings(stack: Stack, name: str) -> None:
    env = stack.service_env(name)
    prefix = f"CASCADE_{name.upper()}_"

    assert env[prefix + "KAFKA_BOOTSTRAP"] == "127.0.0.1:40100"
    assert env[prefix + "TOPIC_PREFIX"] == "t"
    assert env[prefix + "GRPC_HOST"] == "127.0.0.1"
    assert env[prefix + "GRPC_PORT"] == str(PORTS[name])
    assert env[prefix + "DATA_DIR"] == str(stack.home / "data" / name)
    assert env[prefix + "METRICS_PORT"] == str(DEFAULT_METRICS_PORTS[name])
    cascade_keys = [key for key in env if key.startswith("CASCADE_") and key != "CASCADE_TRACES_FILE"]
    assert all(key.startswith(prefix) for key in cascade_keys)


def test_every_service_has_its_own_data_dir(stack: Stack) -> None:
    data_dirs = {stack.service_env(name)[f"CASCADE_{name.upper()}_DATA_DIR"] for name in SERVICES}

    assert len(data_dirs) == len(SERVICES)


def test_home_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    env = Stack(StackConfig(home=Path("relative")), environ={}).service_env("ingest")

    assert env["CASCADE_INGEST_DATA_DIR"] == str(tmp_path / "relative" / "data" / "ingest")


@pytest.mark.parametrize("name", ["trainer", "validator", "monitor"])
def test_pipeline_services_get_ingest_and_registry_addresses(stack: Stack, name: str) -> None:
    env = stack.service_env(name)
    prefix = f"CASCADE_{name.upper()}_"

    assert env[prefix + "INGEST_ADDRESS"] == f"127.0.0.1:{PORTS['ingest']}"
    assert env[prefix + "REGISTRY_ADDRESS"] == f"127.0.0.1:{PORTS['registry']}"


def test_serving_gets_only_the_registry_address(stack: Stack) -> None:
    addresses = {key for key in stack.service_env("serving") if key.endswith("_ADDRESS")}

    assert addresses == {"CASCADE_SERVING_REGISTRY_ADDRESS"}


def test_ingest_depends_on_no_service_and_registry_only_on_ingest(stack: Stack) -> None:
    assert not [key for key in stack.service_env("ingest") if key.endswith("_ADDRESS")]
    registry = {
        key: value for key, value in stack.service_env("registry").items() if key.endswith("_ADDRESS")
    }
    assert registry == {"CASCADE_REGISTRY_INGEST_ADDRESS": stack.address("ingest")}


def test_spans_go_to_a_file_per_service_by_default(stack: Stack) -> None:
    env = stack.service_env("trainer")

    assert env["OTEL_TRACES_EXPORTER"] == "otlp_json_file"
    assert env["CASCADE_TRACES_FILE"] == str(stack.home / "traces" / "trainer.jsonl")


def test_the_callers_exporter_choice_wins(tmp_path: Path) -> None:
    stack = Stack(StackConfig(home=tmp_path), environ={"OTEL_TRACES_EXPORTER": "otlp"})

    env = stack.service_env("trainer")

    assert "OTEL_TRACES_EXPORTER" not in env
    assert "CASCADE_TRACES_FILE" not in env


def test_traces_off_disables_the_exporter(tmp_path: Path) -> None:
    env = Stack(StackConfig(home=tmp_path, traces=False), environ={}).service_env("ingest")

    assert env["OTEL_TRACES_EXPORTER"] == "none"


def test_extra_env_is_applied_last(tmp_path: Path) -> None:
    extra = {"CASCADE_TRAINER_SEED": "7", "CASCADE_TRAINER_GRPC_PORT": "1234"}
    stack = Stack(StackConfig(home=tmp_path, extra_env=extra), environ={})

    env = stack.service_env("trainer")

    assert env["CASCADE_TRAINER_SEED"] == "7"
    assert env["CASCADE_TRAINER_GRPC_PORT"] == "1234"


def test_ports_left_out_keep_their_defaults(tmp_path: Path) -> None:
    stack = Stack(StackConfig(home=tmp_path, ports={"ingest": 1111}), environ={})

    assert stack.address("ingest") == "127.0.0.1:1111"
    assert stack.address("serving") == f"127.0.0.1:{DEFAULT_PORTS['serving']}"


def test_address_of_kafka_is_its_bootstrap(stack: Stack) -> None:
    assert stack.address("kafka") == "127.0.0.1:40100"


def test_unknown_service_is_refused(stack: Stack) -> None:
    with pytest.raises(StackError, match="unknown service"):
        stack.service_env("nope")


def test_status_of_a_stack_not_running_is_all_down(stack: Stack) -> None:
    rows = stack.status()

    assert [row.name for row in rows] == ["kafka", *SERVICES]
    assert {row.health for row in rows} == {"DOWN"}
    assert {row.pid for row in rows} == {None}
    assert rows[1].endpoint == f"127.0.0.1:{PORTS['ingest']}"
    assert not stack.home.exists()  # looking must not create anything


def test_stale_pid_file_is_not_a_running_service(stack: Stack) -> None:
    stack.pid_file("ingest").parent.mkdir(parents=True)
    # Our own pid: alive, but not `python -m cascade.services.ingest`.
    stack.pid_file("ingest").write_text(f"{os.getpid()}\n")

    assert stack.pid("ingest") is None
    assert stack.health("ingest") == "DOWN"


def test_stop_and_kill_of_a_stack_not_running_are_no_ops(stack: Stack) -> None:
    stack.stop()
    assert stack.kill_service("ingest") is False


def test_a_service_dying_at_start_up_is_reported_with_its_log(tmp_path: Path) -> None:
    # An invalid setting makes the real ingest process exit before it binds any port.
    config = StackConfig(
        home=tmp_path, ports={"ingest": 40200}, extra_env={"CASCADE_INGEST_MAX_CLASSES": "many"}
    )
    stack = Stack(config, environ={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")})

    with pytest.raises(StackError, match=r"ingest exited with code \d+ during start-up") as raised:
        stack.start_service("ingest", timeout=60)

    assert "max_classes" in str(raised.value)  # the tail of the service's own log
    assert stack.pid("ingest") is None
    assert not stack.pid_file("ingest").exists()


def test_raw_output_goes_beside_the_rotating_log_and_is_shown_when_a_start_fails(tmp_path: Path) -> None:
    # Services log to logs/<service>.log themselves (rotated, cascade.logs); what they write to
    # stdout and stderr outside logging, such as this start-up traceback, lands in logs/<service>.out.
    config = StackConfig(
        home=tmp_path, ports={"ingest": 40201}, extra_env={"CASCADE_INGEST_MAX_CLASSES": "many"}
    )
    stack = Stack(config, environ={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")})

    with pytest.raises(StackError) as raised:
        stack.start_service("ingest", timeout=60)

    output = stack.output_file("ingest").read_text()
    assert "cascade: starting cascade.services.ingest" in output and "max_classes" in output
    assert f"last lines of {stack.output_file('ingest')}" in str(raised.value)
    assert "CASCADE_LOG_FILE" not in stack.service_env("ingest")  # set per spawned process only
