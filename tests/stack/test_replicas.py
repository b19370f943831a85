"""StackConfig.replicas: N processes of a service, each with its own name, data dir, log, pid file
and ports; callers given every replica; one serving consumer group per replica. The default
(one process each) is what `cascade up` always ran."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade.stack import SERVICES, Stack, StackConfig, StackError
from cascade.stack.launcher import remembered_config

PORTS = {"ingest": 26051, "trainer": 26052, "registry": 26054, "serving": 26001}


@pytest.fixture
def replicated(tmp_path: Path) -> Stack:
    config = StackConfig(
        home=tmp_path,
        ports=dict(PORTS),
        metrics_ports={"ingest": 26151, "serving": 26101},
        replicas={"ingest": 2, "serving": 2, "registry": 3},
    )
    return Stack(config, environ={})


def test_without_replicas_every_service_is_one_process_as_before(tmp_path: Path) -> None:
    stack = Stack(StackConfig(home=tmp_path), environ={})
    assert stack.instances() == list(SERVICES)
    assert stack.service_env("trainer")["CASCADE_TRAINER_INGEST_ADDRESS"] == "127.0.0.1:50051"
    assert "CASCADE_SERVING_INSTANCE_ID" not in stack.service_env("serving")


def test_replicas_are_named_after_their_service_in_start_order(replicated: Stack) -> None:
    assert replicated.instances(["serving", "ingest", "trainer"]) == [
        "ingest",
        "ingest-2",
        "trainer",
        "serving",
        "serving-2",
    ]
    assert replicated.replicas("registry") == ["registry", "registry-2", "registry-3"]


def test_each_replica_has_its_own_ports_and_data_dir_under_its_service_prefix(replicated: Stack) -> None:
    first, second = replicated.service_env("ingest"), replicated.service_env("ingest-2")
    assert (first["CASCADE_INGEST_GRPC_PORT"], second["CASCADE_INGEST_GRPC_PORT"]) == ("26051", "26061")
    assert (first["CASCADE_INGEST_METRICS_PORT"], second["CASCADE_INGEST_METRICS_PORT"]) == ("26151", "26161")
    assert first["CASCADE_INGEST_DATA_DIR"] != second["CASCADE_INGEST_DATA_DIR"]
    assert Path(second["CASCADE_INGEST_DATA_DIR"]) == replicated.data_dir("ingest-2")
    assert not [key for key in second if key.startswith("CASCADE_INGEST-2")]
    assert replicated.log_file("ingest") != replicated.log_file("ingest-2")
    assert replicated.pid_file("ingest") != replicated.pid_file("ingest-2")


def test_a_replica_left_out_of_metrics_ports_exposes_none(replicated: Stack) -> None:
    assert replicated.service_env("registry-2")["CASCADE_REGISTRY_METRICS_PORT"] == "0"


def test_a_replicas_port_can_be_named(tmp_path: Path) -> None:
    config = StackConfig(home=tmp_path, ports={"ingest": 26051, "ingest-2": 26099}, replicas={"ingest": 2})
    assert Stack(config, environ={}).address("ingest-2") == "127.0.0.1:26099"


def test_serving_replicas_consume_in_groups_of_their_own_and_answer_rest_beside_grpc(
    replicated: Stack,
) -> None:
    first, second = replicated.service_env("serving"), replicated.service_env("serving-2")
    assert (first["CASCADE_SERVING_INSTANCE_ID"], second["CASCADE_SERVING_INSTANCE_ID"]) == (
        "serving",
        "serving-2",
    )
    assert (second["CASCADE_SERVING_GRPC_PORT"], second["CASCADE_SERVING_HTTP_PORT"]) == ("26011", "26010")


def test_callers_are_given_every_replica_of_a_dependency(replicated: Stack) -> None:
    env = replicated.service_env("trainer")
    assert env["CASCADE_TRAINER_INGEST_ADDRESS"] == "ipv4:127.0.0.1:26051,127.0.0.1:26061"
    assert env["CASCADE_TRAINER_REGISTRY_ADDRESS"] == ("ipv4:127.0.0.1:26054,127.0.0.1:26064,127.0.0.1:26074")
    # The same for every replica of the caller.
    assert (
        replicated.service_env("serving-2")["CASCADE_SERVING_REGISTRY_ADDRESS"]
        == (env["CASCADE_TRAINER_REGISTRY_ADDRESS"])
    )


@pytest.mark.parametrize("name", ["ingest-3", "trainer-2", "ingest-1", "ingest-x", "nope-2"])
def test_a_replica_the_stack_does_not_have_is_refused(replicated: Stack, name: str) -> None:
    with pytest.raises(StackError, match="unknown service"):
        replicated.service_env(name)


def test_status_has_a_row_per_replica(replicated: Stack) -> None:
    rows = replicated.status()
    names = [row.name for row in rows if not row.name.startswith("kafka")]
    assert names == replicated.instances()
    assert "serving-2" in names and all(row.health == "DOWN" for row in rows)


def test_stopping_a_stack_not_running_clears_every_replicas_stale_pid_file(replicated: Stack) -> None:
    stale = replicated.pid_file("ingest-2")
    stale.parent.mkdir(parents=True)
    stale.write_text("999999\n")
    assert replicated.pid("ingest-2") is None
    replicated.stop()
    assert not stale.exists()


def test_the_replica_counts_are_remembered_with_the_ports(replicated: Stack) -> None:
    replicated._remember_ports()
    remembered = remembered_config(replicated.home)
    assert remembered is not None
    assert remembered.replicas == {"ingest": 2, "serving": 2, "registry": 3}
    assert Stack(remembered, environ={}).address("serving-2") == "127.0.0.1:26011"
