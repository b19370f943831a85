"""A secured broker from the project's launcher (SASL_SSL only: TLS with the local CA, SCRAM-SHA-512
created by Kafka's StorageTool), reached the way services and the CLI reach it (cascade.kafka_security).
Its own home and ports (34xxx) apart from the suite's stack; stopped at the end."""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError
from faststream.kafka import KafkaBroker

from cascade.kafka_security import aiokafka_kwargs
from cascade.messaging import build_broker, subscriber_options
from cascade.settings import ServiceSettings
from cascade.stack import KAFKA_POM, kafka_broker
from cascade.stack.certs import init_pki
from cascade.stack.kafka_broker import BrokerConfig, BrokerSecurity, ClusterConfig

pytestmark = pytest.mark.slow

KAFKA_PORT = 24092
CONTROLLER_PORT = 24093
USER = "cascade"


@dataclass(frozen=True)
class SecuredBroker:
    bootstrap: str
    ca_file: Path
    password_file: Path
    home: Path

    def settings(self, **overrides: Any) -> ServiceSettings:
        values: dict[str, Any] = {
            "kafka_bootstrap": self.bootstrap,
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": USER,
            "kafka_sasl_password_file": self.password_file,
            "kafka_ssl_ca_file": self.ca_file,
            "topic_prefix": "sec",
        }
        return ServiceSettings(**(values | overrides))


@pytest.fixture(scope="module")
def secured() -> Iterator[SecuredBroker]:
    home = Path(tempfile.mkdtemp(prefix="cascade-kafka-sec-"))
    pki = init_pki(home / "tls", ["kafka", "stranger"])
    password_file = home / "kafka-password"
    password_file.write_text(secrets.token_urlsafe(24))
    password_file.chmod(0o600)
    kafka = pki.identity("kafka")
    config = BrokerConfig(
        home / "kafka",
        port=KAFKA_PORT,
        controller_port=CONTROLLER_PORT,
        security=BrokerSecurity(kafka.cert_file, kafka.key_file, pki.ca_file, USER, password_file),
    )
    kafka_broker.start(config, pom=KAFKA_POM, timeout=120)
    try:
        yield SecuredBroker(config.bootstrap, pki.ca_file, password_file, home)
    finally:
        kafka_broker.stop(config)
        shutil.rmtree(home, ignore_errors=True)


async def _round_trip(kwargs: dict[str, Any], bootstrap: str) -> tuple[bytes, list[bytes | None]]:
    """Produce one message to a new topic and read it back with the same connection settings."""
    topic = f"sec-{uuid.uuid4().hex[:8]}"
    body = uuid.uuid4().bytes
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=10_000, **kwargs)
    await producer.start()
    try:
        await producer.send_and_wait(topic, body)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None, **kwargs
    )
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=15_000, max_records=1)
    finally:
        await consumer.stop()
    return body, [record.value for records in batch.values() for record in records]


async def _bootstrap_error(kwargs: dict[str, Any], bootstrap: str) -> KafkaError:
    """What starting a producer with these settings raises (it must raise)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=5_000, **kwargs)
    try:
        await producer.start()
    except KafkaError as error:
        return error
    finally:
        await producer.stop()
    raise AssertionError("the secured broker accepted the client")


def test_the_rendered_broker_has_no_plaintext_client_listener(secured: SecuredBroker) -> None:
    properties = dict(
        line.split("=", 1)
        for line in (secured.home / "kafka" / "server.properties").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert properties["listeners"] == (
        f"SASL_SSL://127.0.0.1:{KAFKA_PORT},CONTROLLER://127.0.0.1:{CONTROLLER_PORT}"
    )
    assert properties["advertised.listeners"] == f"SASL_SSL://127.0.0.1:{KAFKA_PORT}"
    assert properties["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    # The password stays in its file; Kafka reads it from there (DirectoryConfigProvider).
    rendered = (secured.home / "kafka" / "server.properties").read_text()
    assert secured.password_file.read_text() not in rendered
    assert (
        f"{secured.password_file.name}}}"
        in properties["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    )
    for private in ("server.properties", "keystore.pem"):
        assert (secured.home / "kafka" / private).stat().st_mode & 0o077 == 0, private


def test_scram_over_ssl_produces_and_consumes(
    secured: SecuredBroker, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        kwargs = aiokafka_kwargs(secured.settings())
        sent, received = asyncio.run(_round_trip(kwargs, secured.bootstrap))
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert received == [sent]
    # Everything aiokafka logged down to DEBUG, from the CA it loaded on, holds no password.
    assert f"Loading SSL CA from {secured.ca_file}" in caplog.text
    assert secured.password_file.read_text() not in caplog.text


def test_a_plaintext_client_gets_nothing(secured: SecuredBroker) -> None:
    error = asyncio.run(_bootstrap_error({}, secured.bootstrap))
    assert isinstance(error, KafkaConnectionError)


def test_a_wrong_password_fails_authentication(secured: SecuredBroker, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password-at-all")
    error = asyncio.run(
        _bootstrap_error(aiokafka_kwargs(secured.settings(kafka_sasl_password_file=wrong)), secured.bootstrap)
    )
    assert isinstance(error, KafkaConnectionError)
    assert "not-the-password-at-all" not in str(error)
    log = (secured.home / "kafka" / "logs" / "server.log").read_text()
    assert "invalid credentials with SASL mechanism SCRAM-SHA-512" in log


def test_the_brokers_files_hold_no_password_but_its_own(secured: SecuredBroker) -> None:
    """After clients came and went, Kafka's logs and the launcher's files name no password: it stays
    in the password file, which Kafka reads (its SCRAM credentials are salted hashes)."""
    password = secured.password_file.read_text()
    logs = list((secured.home / "kafka" / "logs").iterdir())
    assert any(path.name == "server.log" for path in logs)
    for path in [*logs, *(secured.home / "kafka").glob("*.*")]:
        if path.is_file():
            assert password not in path.read_text(errors="replace"), path


def test_a_client_not_trusting_the_ca_is_refused(
    secured: SecuredBroker, caplog: pytest.LogCaptureFixture
) -> None:
    other = init_pki(secured.home / "other-tls", ["anyone"])
    kwargs = aiokafka_kwargs(secured.settings(kafka_ssl_ca_file=other.ca_file))
    error = asyncio.run(_bootstrap_error(kwargs, secured.bootstrap))
    assert isinstance(error, KafkaConnectionError)
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


def test_a_service_broker_publishes_and_consumes_an_event_over_sasl_ssl(
    secured: SecuredBroker, caplog: pytest.LogCaptureFixture
) -> None:
    settings = secured.settings()
    topic = f"sec-events-{uuid.uuid4().hex[:8]}"
    body = {"hello": uuid.uuid4().hex}

    async def scenario() -> Any:
        broker: KafkaBroker = build_broker(settings, "sectest")
        received: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        @broker.subscriber(topic, **subscriber_options("sectest"))
        async def handle(message: dict[str, str]) -> None:
            if not received.done():
                received.set_result(message)

        async with broker:
            await broker.start()
            await broker.publish(body, topic)
            return await asyncio.wait_for(received, 60)

    with caplog.at_level(logging.DEBUG):
        assert asyncio.run(scenario()) == body
    # FastStream and aiokafka log the broker's start and subscriptions, never the password.
    assert any(record.name.startswith("cascade.sectest") for record in caplog.records)
    assert secured.password_file.read_text() not in caplog.text


def test_a_secured_cluster_replicates_over_sasl_ssl(tmp_path: Path) -> None:
    """Three nodes whose only broker listener is SASL_SSL: a write acknowledged by two in-sync
    replicas (acks=all, min.insync.replicas=2) proves the followers fetch over it as the SCRAM user."""
    pki = init_pki(tmp_path / "tls", ["kafka"])
    password_file = tmp_path / "kafka-password"
    password_file.write_text(secrets.token_urlsafe(24))
    kafka = pki.identity("kafka")
    cluster = ClusterConfig(
        tmp_path / "kafka",
        brokers=3,
        port=24292,  # nodes on 24292, 24294, 24296; controllers on 24293, 24295, 24297
        controller_port=24293,
        security=BrokerSecurity(kafka.cert_file, kafka.key_file, pki.ca_file, USER, password_file),
    )
    settings = ServiceSettings(
        kafka_bootstrap=cluster.bootstrap,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username=USER,
        kafka_sasl_password_file=password_file,
        kafka_ssl_ca_file=pki.ca_file,
    )
    try:
        kafka_broker.start_cluster(cluster, pom=KAFKA_POM, timeout=180)
        assert kafka_broker.quorum_status(cluster).voters == (1, 2, 3)
        sent, received = asyncio.run(_round_trip(aiokafka_kwargs(settings), cluster.bootstrap))
        assert received == [sent]
    finally:
        kafka_broker.stop_cluster(cluster)


def test_securing_a_store_formatted_without_the_scram_user_is_refused(tmp_path: Path) -> None:
    """Only formatting creates the SCRAM user: a broker started plain once, then secured, would
    refuse every client, so the launcher refuses to start it and says why."""
    pki = init_pki(tmp_path / "tls", ["kafka"])
    password_file = tmp_path / "kafka-password"
    password_file.write_text(secrets.token_urlsafe(24))
    kafka = pki.identity("kafka")
    plain = BrokerConfig(tmp_path / "kafka", port=24392, controller_port=24393)
    kafka_broker.start(plain, pom=KAFKA_POM, timeout=120)
    kafka_broker.stop(plain)
    secured = BrokerConfig(
        plain.home,
        port=plain.port,
        controller_port=plain.controller_port,
        security=BrokerSecurity(kafka.cert_file, kafka.key_file, pki.ca_file, USER, password_file),
    )
    try:
        with pytest.raises(kafka_broker.BrokerError, match="formatted without the SCRAM user 'cascade'"):
            kafka_broker.start(secured, pom=KAFKA_POM, timeout=120)
        assert not kafka_broker.status(secured).running
    finally:
        kafka_broker.stop(secured)
