"""Kafka security settings and what they become (cascade.kafka_security). The real broker proof is in
tests/integration/test_kafka_security.py."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from faststream.kafka.security import parse_security
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from pydantic import ValidationError

from cascade.kafka_security import aiokafka_kwargs, faststream_security
from cascade.settings import ServiceSettings
from cascade.stack.certs import LocalPki, init_pki

PASSWORD = "s3cret-scram-password"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPki:
    return init_pki(tmp_path_factory.mktemp("tls"), ["ingest"])


def _settings(**values: Any) -> ServiceSettings:
    return ServiceSettings(**values)


def test_plaintext_by_default_means_no_security() -> None:
    assert faststream_security(_settings()) is None
    assert aiokafka_kwargs(_settings()) == {}


@pytest.mark.parametrize(
    ("mechanism", "expected"),
    [("SCRAM-SHA-512", SASLScram512), ("SCRAM-SHA-256", SASLScram256), ("PLAIN", SASLPlaintext)],
)
def test_sasl_ssl_gives_faststream_the_mechanism_and_a_verifying_context(
    pki: LocalPki, mechanism: str, expected: type[BaseSecurity]
) -> None:
    settings = _settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="cascade",
        kafka_sasl_password=PASSWORD,
        kafka_ssl_ca_file=pki.ca_file,
    )
    security = faststream_security(settings)
    assert type(security) is expected
    # What FastStream hands aiokafka is what the raw clients get.
    parsed = parse_security(security)
    kwargs = aiokafka_kwargs(settings)
    assert parsed["security_protocol"] == kwargs["security_protocol"] == "SASL_SSL"
    assert parsed["sasl_mechanism"] == kwargs["sasl_mechanism"] == mechanism
    assert parsed["sasl_plain_username"] == kwargs["sasl_plain_username"] == "cascade"
    assert parsed["sasl_plain_password"] == kwargs["sasl_plain_password"] == PASSWORD
    for context in (parsed["ssl_context"], kwargs["ssl_context"]):
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_sasl_plaintext_has_no_ssl(pki: LocalPki) -> None:
    settings = _settings(
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u", kafka_sasl_password=PASSWORD
    )
    assert parse_security(faststream_security(settings))["security_protocol"] == "SASL_PLAINTEXT"
    assert "ssl_context" not in aiokafka_kwargs(settings)


def test_ssl_with_a_client_certificate(pki: LocalPki) -> None:
    identity = pki.identity("ingest")
    settings = _settings(
        kafka_security_protocol="SSL",
        kafka_ssl_ca_file=pki.ca_file,
        kafka_ssl_cert_file=identity.cert_file,
        kafka_ssl_key_file=identity.key_file,
    )
    parsed = parse_security(faststream_security(settings))
    assert parsed["security_protocol"] == "SSL"
    assert isinstance(parsed["ssl_context"], ssl.SSLContext)
    assert aiokafka_kwargs(settings)["security_protocol"] == "SSL"


def test_the_password_file_wins_and_is_read_when_the_clients_are_built(tmp_path: Path) -> None:
    password_file = tmp_path / "kafka-password"
    password_file.write_text(PASSWORD + "\n")
    settings = _settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="u",
        kafka_sasl_password="ignored",
        kafka_sasl_password_file=password_file,
    )
    assert aiokafka_kwargs(settings)["sasl_plain_password"] == PASSWORD
    password_file.unlink()
    with pytest.raises(ValueError, match="cannot read kafka_sasl_password_file") as refused:
        aiokafka_kwargs(settings)
    assert PASSWORD not in str(refused.value)


def test_an_empty_password_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    settings = _settings(
        kafka_security_protocol="SASL_SSL", kafka_sasl_username="u", kafka_sasl_password_file=empty
    )
    with pytest.raises(ValueError, match="is empty"):
        faststream_security(settings)


def test_a_missing_ca_file_is_named(tmp_path: Path) -> None:
    settings = _settings(kafka_security_protocol="SSL", kafka_ssl_ca_file=tmp_path / "absent.pem")
    with pytest.raises(ValueError, match=r"absent\.pem does not exist"):
        faststream_security(settings)


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_password": PASSWORD},
            "needs kafka_sasl_username",
        ),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "u"},
            "needs kafka_sasl_password",
        ),
        ({"kafka_ssl_ca_file": "/ca.pem"}, "kafka_security_protocol is PLAINTEXT"),
        (
            {
                "kafka_security_protocol": "SASL_PLAINTEXT",
                "kafka_sasl_username": "u",
                "kafka_sasl_password": PASSWORD,
                "kafka_ssl_ca_file": "/ca.pem",
            },
            "kafka_security_protocol is SASL_PLAINTEXT",
        ),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_cert_file": "/c.pem"}, "go together"),
        ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
        ({"kafka_sasl_mechanism": "GSSAPI"}, "kafka_sasl_mechanism"),
    ],
)
def test_a_half_configured_security_fails_at_start(values: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason) as refused:
        _settings(**values)
    assert PASSWORD not in str(refused.value)


def test_the_password_never_shows_in_the_settings_repr() -> None:
    settings = _settings(
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u", kafka_sasl_password=PASSWORD
    )
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings.model_dump())


def test_the_environment_configures_a_service(monkeypatch: pytest.MonkeyPatch, pki: LocalPki) -> None:
    monkeypatch.setenv("CASCADE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("CASCADE_KAFKA_SASL_USERNAME", "cascade")
    monkeypatch.setenv("CASCADE_KAFKA_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("CASCADE_KAFKA_SSL_CA_FILE", str(pki.ca_file))
    assert isinstance(faststream_security(ServiceSettings()), SASLScram512)
