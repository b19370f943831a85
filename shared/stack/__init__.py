"""A whole Cascade stack on this machine: the Kafka broker (or a small KRaft cluster) and the six
services, each a detached process, with the identities and TLS material they share, all kept under
one home directory. An application of the library, not part of it: `cascade up`, the integration
tests and the bench drive it; no service imports it (tests/stack/test_layering.py).

    launcher      Stack and StackConfig: start, watch and stop the stack (`Stack.start`, `status`, `stop`)
    kafka_broker  a real Apache Kafka 4.x broker or cluster run with plain `java`
    identities    the tokens and principals a stack keeps in HOME/secrets
    certs         a local CA and one certificate per identity, in HOME/tls
"""

from cascade.stack.launcher import (
    DEFAULT_METRICS_PORTS,
    DEFAULT_PORTS,
    DEPENDENCIES,
    KAFKA_POM,
    KAFKA_USER,
    SERVICES,
    Health,
    ServiceStatus,
    Stack,
    StackConfig,
    StackError,
    check_health,
    default_home,
    remembered_config,
)

__all__ = [
    "DEFAULT_METRICS_PORTS",
    "DEFAULT_PORTS",
    "DEPENDENCIES",
    "KAFKA_POM",
    "KAFKA_USER",
    "SERVICES",
    "Health",
    "ServiceStatus",
    "Stack",
    "StackConfig",
    "StackError",
    "check_health",
    "default_home",
    "remembered_config",
]
