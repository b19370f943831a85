"""The shared authentication and TLS mechanism, through a real grpc.aio server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cascade.client.channels import ClientSecurity
from cascade.grpc_io import open_channel
from cascade.security import (
    OPEN,
    Authenticator,
    AuthInterceptor,
    PrincipalEntry,
    Principals,
    current_principal,
    hash_token,
    method_roles,
    server_credentials,
    write_principals,
)
from cascade.settings import ServiceSettings
from cascade.stack.certs import LocalPki, init_pki
from tests.grpc_server import serving

SERVICE = "cascade.test.v1.Probe"
ROLES = method_roles(
    SERVICE,
    {"Read": "monitor:read", "Write": "ingest:write", "Stream": "monitor:read", "Live": OPEN},
)  # "Forgotten" has no role: admin only
TOKENS = {
    "reader": "reader-token-0123456789",
    "writer": "writer-token-0123456789",
    "root": "root-token-012345",
}
PRINCIPALS = Principals(
    [
        PrincipalEntry("reader", frozenset({"monitor:read"}), hash_token(TOKENS["reader"])),
        PrincipalEntry("writer", frozenset({"ingest:write"}), hash_token(TOKENS["writer"])),
        PrincipalEntry("root", frozenset({"admin"}), hash_token(TOKENS["root"])),
        PrincipalEntry("alice", frozenset({"monitor:read"})),  # known by her certificate only
    ]
)


async def _whoami(request: bytes, context: Any) -> bytes:
    return current_principal().name.encode()


async def _whoami_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for _ in range(2):
        yield current_principal().name.encode()


def _register(server: grpc.aio.Server) -> None:
    unary = grpc.unary_unary_rpc_method_handler(_whoami)
    handlers = {name: unary for name in ("Read", "Write", "Live", "Forgotten")}
    handlers["Stream"] = grpc.unary_stream_rpc_method_handler(_whoami_stream)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])


class Probe:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel

    async def call(self, method: str) -> str:
        answer = await self.channel.unary_unary(f"/{SERVICE}/{method}")(b"", timeout=10)
        return bytes(answer).decode()

    async def stream(self) -> list[str]:
        return [
            bytes(m).decode() async for m in self.channel.unary_stream(f"/{SERVICE}/Stream")(b"", timeout=10)
        ]

    async def code(self, method: str) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await self.call(method)
        return raised.value.code()


async def _probe(address: str, security: ClientSecurity) -> Probe:
    return Probe(open_channel(address, security))


async def test_required_authentication_refuses_strangers_and_checks_each_methods_role() -> None:
    auth = AuthInterceptor(Authenticator(PRINCIPALS, required=True), ROLES)
    async with serving(_register, [auth]) as address:
        anonymous = await _probe(address, ClientSecurity())
        stranger = await _probe(address, ClientSecurity(token="not-a-known-token-at-all"))
        reader = await _probe(address, ClientSecurity(token=TOKENS["reader"]))
        writer = await _probe(address, ClientSecurity(token=TOKENS["writer"]))
        root = await _probe(address, ClientSecurity(token=TOKENS["root"]))

        assert await anonymous.code("Read") == grpc.StatusCode.UNAUTHENTICATED
        assert await stranger.code("Read") == grpc.StatusCode.UNAUTHENTICATED
        assert await anonymous.call("Live") == "anonymous"  # open methods need nobody
        assert await reader.call("Read") == "reader"
        assert await reader.stream() == ["reader", "reader"]
        assert await reader.code("Write") == grpc.StatusCode.PERMISSION_DENIED
        assert await writer.code("Read") == grpc.StatusCode.PERMISSION_DENIED
        assert await writer.call("Write") == "writer"
        # A method nobody gave a role fails closed: admins only.
        assert await reader.code("Forgotten") == grpc.StatusCode.PERMISSION_DENIED
        assert await root.call("Forgotten") == "root"
        for probe in (anonymous, stranger, reader, writer, root):
            await probe.channel.close()


async def test_optional_authentication_trusts_anonymous_callers_but_checks_presented_tokens() -> None:
    auth = AuthInterceptor(Authenticator(PRINCIPALS, required=False), ROLES)
    async with serving(_register, [auth]) as address:
        anonymous = await _probe(address, ClientSecurity())
        stranger = await _probe(address, ClientSecurity(token="not-a-known-token-at-all"))
        reader = await _probe(address, ClientSecurity(token=TOKENS["reader"]))
        assert await anonymous.call("Write") == "anonymous"
        assert await stranger.code("Read") == grpc.StatusCode.UNAUTHENTICATED
        assert await reader.code("Write") == grpc.StatusCode.PERMISSION_DENIED
        for probe in (anonymous, stranger, reader):
            await probe.channel.close()


def test_principals_files_round_trip_and_refuse_unknown_roles(tmp_path: Path) -> None:
    path = tmp_path / "principals.toml"
    write_principals(
        path, [PrincipalEntry("ops", frozenset({"reader", "trainer:train"}), hash_token("t" * 32))]
    )
    loaded = Principals.load(path)
    assert loaded.entries["ops"].roles == {"ingest:read", "monitor:read", "registry:read", "trainer:train"}
    assert path.stat().st_mode & 0o077 == 0
    found = loaded.by_token("t" * 32)
    assert found is not None and found.name == "ops"
    assert loaded.by_token("t" * 31) is None
    assert "t" * 32 not in path.read_text()  # only the hash is at rest

    path.write_text('[principals.x]\nroles = ["superuser"]\n')
    with pytest.raises(ValueError, match="unknown role 'superuser'"):
        Principals.load(path)
    path.write_text('[principals.x]\ntoken_sha256 = "abc"\nroles = []\n')
    with pytest.raises(ValueError, match="64 lowercase hex"):
        Principals.load(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPki:
    return init_pki(tmp_path_factory.mktemp("pki"), ["server", "alice", "mallory"])


def _settings(pki: LocalPki, *, require_client_cert: bool) -> ServiceSettings:
    server = pki.identity("server")
    return ServiceSettings(
        tls_cert_file=server.cert_file,
        tls_key_file=server.key_file,
        tls_ca_file=pki.ca_file,
        tls_require_client_cert=require_client_cert,
    )


def _as(pki: LocalPki, name: str | None, token: str = "") -> ClientSecurity:
    if name is None:
        return ClientSecurity(token=token, ca_file=pki.ca_file)
    identity = pki.identity(name)
    return ClientSecurity(
        token=token, ca_file=pki.ca_file, cert_file=identity.cert_file, key_file=identity.key_file
    )


@pytest.fixture
def foreign_ca(tmp_path: Path) -> Iterator[Path]:
    yield init_pki(tmp_path / "other", ["server"]).ca_file


async def test_tls_serves_only_clients_that_trust_its_ca(pki: LocalPki, foreign_ca: Path) -> None:
    credentials = server_credentials(_settings(pki, require_client_cert=False))
    auth = AuthInterceptor(Authenticator(PRINCIPALS, required=True), ROLES)
    async with serving(_register, [auth], credentials) as address:
        trusting = await _probe(address, _as(pki, None, token=TOKENS["reader"]))
        assert await trusting.call("Read") == "reader"
        plaintext = await _probe(address, ClientSecurity(token=TOKENS["reader"]))
        assert await plaintext.code("Read") == grpc.StatusCode.UNAVAILABLE
        distrusting = await _probe(address, ClientSecurity(token=TOKENS["reader"], ca_file=foreign_ca))
        assert await distrusting.code("Read") == grpc.StatusCode.UNAVAILABLE
        for probe in (trusting, plaintext, distrusting):
            await probe.channel.close()


async def test_mtls_makes_the_certificates_common_name_the_principal(pki: LocalPki) -> None:
    credentials = server_credentials(_settings(pki, require_client_cert=True))
    auth = AuthInterceptor(Authenticator(PRINCIPALS, required=True), ROLES)
    async with serving(_register, [auth], credentials) as address:
        alice = await _probe(address, _as(pki, "alice"))
        assert await alice.call("Read") == "alice"
        assert await alice.code("Write") == grpc.StatusCode.PERMISSION_DENIED
        # A valid certificate the principals file does not name holds no role.
        mallory = await _probe(address, _as(pki, "mallory"))
        assert await mallory.code("Read") == grpc.StatusCode.PERMISSION_DENIED
        # A token still wins over the certificate it travels with.
        alice_as_writer = await _probe(address, _as(pki, "alice", token=TOKENS["writer"]))
        assert await alice_as_writer.call("Write") == "writer"
        without_certificate = await _probe(address, _as(pki, None, token=TOKENS["reader"]))
        assert await without_certificate.code("Read") == grpc.StatusCode.UNAVAILABLE
        for probe in (alice, mallory, alice_as_writer, without_certificate):
            await probe.channel.close()


def test_secrets_stay_out_of_reprs_and_settings_dumps(tmp_path: Path) -> None:
    token = "s3cret-token-value-0123456789"
    security = ClientSecurity(token=token)
    assert token not in repr(security)
    settings = ServiceSettings(token=token)  # type: ignore[arg-type]
    assert token not in repr(settings)
    assert token not in settings.model_dump_json()
    assert settings.outgoing_token() == token
    secret_file = tmp_path / "token"
    secret_file.write_text(token + "\n")
    assert ServiceSettings(token_file=secret_file).outgoing_token() == token
