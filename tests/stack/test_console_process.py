"""The web console as a process of the stack (`cascade up` starts it): started once on its port,
shown in status with its URL, found again by a second start, and stopped with the stack. A real
Streamlit server, without Kafka or services (its pages then say the stack is down)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cascade.stack import Stack, StackConfig, StackError
from cascade.stack.launcher import CONSOLE, console_answers

pytest.importorskip("streamlit")  # the console extra


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    config = StackConfig(home=tmp_path / "home", kafka_port=_free_port(), controller_port=_free_port())
    started = Stack(config, environ=dict(os.environ))
    yield started
    started.stop()


def test_the_console_starts_once_shows_in_status_and_stops_with_the_stack(stack: Stack) -> None:
    port = _free_port()

    url = stack.start_console(port, timeout=90)

    assert url == f"http://127.0.0.1:{port}/"
    row = stack.console_status()
    assert (row.name, row.endpoint, row.health) == (CONSOLE, url, "SERVING")
    assert stack.pid_file(CONSOLE).read_text().strip() == str(row.pid)
    assert stack.log_file(CONSOLE).exists()
    # A second start (another `cascade up`) finds it, on the port it was started on.
    assert Stack(stack.config).start_console(_free_port()) == url
    assert Stack(stack.config).console_status().pid == row.pid

    stack.stop()

    assert not console_answers(port)
    assert Stack(stack.config).console_status().health == "DOWN"
    assert not stack.pid_file(CONSOLE).exists()


def test_a_taken_port_is_a_stack_error(stack: Stack) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])

        with pytest.raises(StackError, match=f"port {port} is taken"):
            stack.start_console(port)

    assert stack.console_status().health == "DOWN"
