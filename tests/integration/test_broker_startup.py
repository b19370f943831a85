"""A broker whose port is taken is refused with the reason, before or after its JVM starts.

The case is one CI met: the broker's port was the local end of another process's connection (ports
from 32768 up are the kernel's ephemeral range, so fixed test ports stay below it). Nothing listens
there, so a connect probe sees the port as free."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cascade.stack import KAFKA_POM, kafka_broker
from cascade.stack.kafka_broker import BrokerConfig

KAFKA_PORT = 24492
CONTROLLER_PORT = 24493


@pytest.fixture
def port_held_by_a_connection() -> Iterator[int]:
    with socket.socket() as server, socket.socket() as client:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client.bind(("127.0.0.1", KAFKA_PORT))
        client.connect(server.getsockname())
        yield KAFKA_PORT


def test_a_port_held_without_a_listener_is_refused_before_launch(
    tmp_path: Path, port_held_by_a_connection: int
) -> None:
    config = BrokerConfig(tmp_path / "kafka", port=port_held_by_a_connection, controller_port=CONTROLLER_PORT)
    with pytest.raises(
        kafka_broker.BrokerError, match=rf"127\.0\.0\.1:{KAFKA_PORT} is held without a listener"
    ):
        kafka_broker.start(config, pom=KAFKA_POM, timeout=120)
    assert not config.pid_file.exists()


@pytest.mark.slow
def test_a_port_taken_after_the_check_fails_the_jvm_whose_error_names_the_cause(
    tmp_path: Path, port_held_by_a_connection: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check and the JVM's bind race: lose that race, and the cause (logged once, early, then
    buried under the orderly shutdown of every component) is quoted from the run's first errors."""
    monkeypatch.setattr(kafka_broker, "port_bindable", lambda host, port: True)
    config = BrokerConfig(tmp_path / "kafka", port=port_held_by_a_connection, controller_port=CONTROLLER_PORT)
    try:
        with pytest.raises(kafka_broker.BrokerError) as refused:
            kafka_broker.start(config, pom=KAFKA_POM, timeout=120)
    finally:
        kafka_broker.stop(config)
    first_errors = str(refused.value).split("--- first errors in", 1)[1].split("\n--- ", 1)[0]
    assert f"Socket server failed to bind to 127.0.0.1:{KAFKA_PORT}: Address already in use" in first_errors
    assert "\tat " not in first_errors  # the exception's message, not its stack
    assert not kafka_broker.status(config).running
