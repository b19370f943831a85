"""Channels to Cascade's services: one place for the gRPC options, TLS and the bearer token.

Services, the CLI, the console and users' code all open their channels here. Tracing is added when
OpenTelemetry's gRPC instrumentation is installed (it comes with the services, not with the SDK):
each call then carries the caller's trace context, so a cascade started from a script is one trace.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import grpc

__all__ = [
    "GRPC_OPTIONS",
    "PLAINTEXT",
    "ClientSecurity",
    "open_blocking_channel",
    "open_channel",
]

# Large enough for a 64-row float64 inference batch or an artifact chunk, with headroom.
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # A second copy of a service must fail to bind rather than silently share the port.
    ("grpc.so_reuseport", 0),
]


class _CallerSettings(Protocol):
    """What a service's settings say about its own identity (cascade.settings.ServiceSettings)."""

    @property
    def tls_ca_file(self) -> Path | None: ...
    @property
    def tls_cert_file(self) -> Path | None: ...
    @property
    def tls_key_file(self) -> Path | None: ...

    def outgoing_token(self) -> str: ...


@dataclass(frozen=True)
class ClientSecurity:
    """How a process calls Cascade's services: TLS when given the CA bundle (presenting its own
    certificate when given one), and a bearer token when given one. The token never shows in a repr."""

    token: str = field(default="", repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def of(cls, settings: _CallerSettings) -> ClientSecurity:
        """A service's identity for the calls it makes."""
        return cls(
            token=settings.outgoing_token(),
            ca_file=settings.tls_ca_file,
            cert_file=settings.tls_cert_file,
            key_file=settings.tls_key_file,
        )

    @classmethod
    def from_env(cls, token: str = "") -> ClientSecurity:
        """A user's identity from the environment: `token` or CASCADE_TOKEN; TLS when
        CASCADE_TLS_CA_FILE names a CA, presenting CASCADE_TLS_CERT_FILE and CASCADE_TLS_KEY_FILE
        when both are set (for servers that want mTLS)."""

        def path(name: str) -> Path | None:
            value = os.environ.get(name, "")
            return Path(value) if value else None

        return cls(
            token=token or os.environ.get("CASCADE_TOKEN", ""),
            ca_file=path("CASCADE_TLS_CA_FILE"),
            cert_file=path("CASCADE_TLS_CERT_FILE"),
            key_file=path("CASCADE_TLS_KEY_FILE"),
        )

    @property
    def tls(self) -> bool:
        return self.ca_file is not None

    @cached_property
    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        if self.ca_file is None:
            return None
        mine = self.cert_file is not None and self.key_file is not None
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=self.key_file.read_bytes() if mine and self.key_file else None,
            certificate_chain=self.cert_file.read_bytes() if mine and self.cert_file else None,
        )

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


PLAINTEXT: Final = ClientSecurity()


def _tracing_interceptors() -> list[Any]:
    """Client spans that carry the trace context to the server, when OpenTelemetry's gRPC
    instrumentation is installed; none otherwise (an SDK-only install)."""
    try:
        from opentelemetry.instrumentation.grpc import aio_client_interceptors, filters
    except ImportError:
        return []
    interceptors: list[Any] = aio_client_interceptors(filter_=filters.negate(filters.health_check()))
    return interceptors


def open_channel(address: str, security: ClientSecurity = PLAINTEXT) -> grpc.aio.Channel:
    """A channel that traces its calls and carries the trace context; TLS and a bearer token on
    every call as `security` says."""
    interceptors: list[Any] = _tracing_interceptors()
    if security.token:
        interceptors += _bearer_token_interceptors(security.token)
    credentials = security.channel_credentials
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=GRPC_OPTIONS, interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options=GRPC_OPTIONS, interceptors=interceptors)


def open_blocking_channel(address: str, security: ClientSecurity = PLAINTEXT) -> grpc.Channel:
    """The blocking counterpart of `open_channel`, for command-line tools and probes."""
    credentials = security.channel_credentials
    if credentials is not None:
        channel = grpc.secure_channel(address, credentials, options=GRPC_OPTIONS)
    else:
        channel = grpc.insecure_channel(address, options=GRPC_OPTIONS)
    if security.token:
        return grpc.intercept_channel(channel, _BlockingBearerToken(security.token))
    return channel


# grpc-stubs makes the interceptors generic for type checkers only; at run time they are plain classes.
if TYPE_CHECKING:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor
    _StreamStream = grpc.aio.StreamStreamClientInterceptor


class _BearerToken:
    """Adds `authorization: Bearer <token>` to a call's metadata. grpc.aio files each interceptor
    under one call type only, so there is one subclass per type (`_bearer_token_interceptors`)."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self.header)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


class _UnaryUnaryToken(_BearerToken, _UnaryUnary):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


class _UnaryStreamToken(_BearerToken, _UnaryStream):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


class _StreamUnaryToken(_BearerToken, _StreamUnary):
    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._with_token(details), request_iterator)


class _StreamStreamToken(_BearerToken, _StreamStream):
    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._with_token(details), request_iterator)


def _bearer_token_interceptors(token: str) -> list[Any]:
    return [
        cls(token) for cls in (_UnaryUnaryToken, _UnaryStreamToken, _StreamUnaryToken, _StreamStreamToken)
    ]


class _BlockingCallDetails(grpc.ClientCallDetails):
    def __init__(self, base: grpc.ClientCallDetails, metadata: Any) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = base.wait_for_ready
        self.compression = base.compression


class _BlockingBearerToken(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """The blocking API takes one interceptor for every call type."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: Any) -> grpc.ClientCallDetails:
        return _BlockingCallDetails(details, [*(details.metadata or ()), self.header])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._with_token(details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._with_token(details), request_iterator)
