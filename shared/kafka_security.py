"""How a Kafka client connects, from a service's `kafka_*` settings: FastStream's security object for
the service's broker, and the same as keyword arguments for raw aiokafka clients (the CLI's).

Both come from one place so that a producer, a consumer and an admin client of one service never
differ, and none of them connects in the clear when SSL or SASL is configured (the settings refuse
a half-configured mix; aiokafka refuses SSL without a context).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from aiokafka.helpers import create_ssl_context
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from cascade.settings import ServiceSettings

__all__ = ["aiokafka_kwargs", "faststream_security", "sasl_password"]

_SASL_CLASSES: dict[str, type[SASLPlaintext | SASLScram256 | SASLScram512]] = {
    "PLAIN": SASLPlaintext,
    "SCRAM-SHA-256": SASLScram256,
    "SCRAM-SHA-512": SASLScram512,
}


def faststream_security(settings: ServiceSettings) -> BaseSecurity | None:
    """The `security=` of a KafkaBroker; None for PLAINTEXT."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = _ssl_context(settings) if protocol.endswith("SSL") else None
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    sasl_class = _SASL_CLASSES[settings.kafka_sasl_mechanism]
    return sasl_class(
        settings.kafka_sasl_username,
        sasl_password(settings),
        ssl_context=context,
        use_ssl=context is not None,
    )


def aiokafka_kwargs(settings: ServiceSettings) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaProducer/Consumer/AdminClient: empty for PLAINTEXT."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if protocol.endswith("SSL"):
        kwargs["ssl_context"] = _ssl_context(settings)
    if protocol.startswith("SASL_"):
        kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
        kwargs["sasl_plain_password"] = sasl_password(settings)
    return kwargs


def sasl_password(settings: ServiceSettings) -> str:
    """The SASL password: the file's first line when a file is set (a mounted secret), else the
    setting. The error names the file, never its content."""
    password_file = settings.kafka_sasl_password_file
    if password_file is None:
        return settings.kafka_sasl_password.get_secret_value()
    try:
        password = password_file.read_text().strip()
    except OSError as error:
        raise ValueError(f"cannot read kafka_sasl_password_file {password_file}: {error.strerror}") from None
    if not password:
        raise ValueError(f"kafka_sasl_password_file {password_file} is empty")
    return password


def _ssl_context(settings: ServiceSettings) -> ssl.SSLContext:
    """Verifies the broker (hostname included) against the CA, presenting the client certificate if
    one is set. A missing file is named in the error."""
    for file in (settings.kafka_ssl_ca_file, settings.kafka_ssl_cert_file, settings.kafka_ssl_key_file):
        _require_readable(file)
    context: ssl.SSLContext = create_ssl_context(
        cafile=settings.kafka_ssl_ca_file,
        certfile=settings.kafka_ssl_cert_file,
        keyfile=settings.kafka_ssl_key_file,
    )
    return context


def _require_readable(file: Path | None) -> None:
    if file is not None and not file.is_file():
        raise ValueError(f"Kafka TLS file {file} does not exist")
