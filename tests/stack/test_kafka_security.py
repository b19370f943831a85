"""A stack with kafka_security, without starting it: what its services and the CLI are given, what
the broker is configured with, and what the home remembers. The real broker: tests/integration/
test_kafka_security.py and test_secured_stack.py."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest

from cascade.kafka_security import faststream_security
from cascade.services.ingest.settings import IngestSettings
from cascade.stack import KAFKA_USER, SERVICES, Stack, StackConfig, kafka_broker, remembered_config


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    config = StackConfig(home=tmp_path / "home", kafka_port=40200, controller_port=40201, kafka_security=True)
    secured = Stack(config, environ={})
    secured._prepare_kafka_secrets()
    return secured


def test_the_password_is_made_once_private_and_kept(stack: Stack) -> None:
    password_file = stack.kafka_password_file()
    password = password_file.read_text()
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert len(password.strip()) >= 32
    stack._prepare_kafka_secrets()
    assert password_file.read_text() == password


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_gets_sasl_ssl_with_a_password_file_never_the_password(stack: Stack, name: str) -> None:
    env = stack.service_env(name)
    prefix = f"CASCADE_{name.upper()}_"
    assert env[prefix + "KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env[prefix + "KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert env[prefix + "KAFKA_SASL_USERNAME"] == KAFKA_USER
    assert env[prefix + "KAFKA_SASL_PASSWORD_FILE"] == str(stack.kafka_password_file())
    assert Path(env[prefix + "KAFKA_SSL_CA_FILE"]).is_file()
    password = stack.kafka_password_file().read_text().strip()
    assert all(password not in value for value in env.values())


def test_a_service_reads_those_settings_into_faststream_security(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in stack.service_env("ingest").items():
        monkeypatch.setenv(key, value)
    security = faststream_security(IngestSettings())
    assert security is not None
    assert security.use_ssl and isinstance(security.ssl_context, ssl.SSLContext)


def test_the_cli_gets_the_same_client_options(stack: Stack) -> None:
    options = stack.kafka_client_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_plain_username"] == KAFKA_USER
    assert options["sasl_plain_password"] == stack.kafka_password_file().read_text().strip()


def test_the_broker_listens_sasl_ssl_only(stack: Stack) -> None:
    (node,) = stack.kafka.nodes
    properties = kafka_broker.render_server_properties(node)
    assert "listeners=SASL_SSL://127.0.0.1:40200,CONTROLLER://127.0.0.1:40201" in properties
    assert "PLAINTEXT://" not in properties.replace("CONTROLLER://", "")


def test_the_home_remembers_kafka_security(stack: Stack) -> None:
    stack._remember_ports()
    remembered = remembered_config(stack.home)
    assert remembered is not None and remembered.kafka_security
    assert (
        stack.kafka_password_file().read_text().strip() not in (stack.home / "run" / "stack.json").read_text()
    )


def test_an_unsecured_stack_sets_nothing_and_stays_plaintext(tmp_path: Path) -> None:
    plain = Stack(StackConfig(home=tmp_path / "plain"), environ={})
    assert not any("KAFKA_S" in key for key in plain.service_env("registry"))
    assert plain.kafka_client_options() == {}
    assert "listeners=PLAINTEXT://127.0.0.1:9092," in kafka_broker.render_server_properties(
        plain.kafka.nodes[0]
    )
