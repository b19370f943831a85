"""The local PKI (cascade.stack.certs), proven by real TLS handshakes with Python's ssl over loopback."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509

from cascade.stack.certs import Identity, LocalPki, init_pki, load_pki


def _server_context(pki: LocalPki, server: Identity) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_file))
    context.load_cert_chain(server.cert_file, server.key_file)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext, server_name: str) -> str:
    """Connects a client to a one-shot TLS server on loopback; returns the CN the server saw."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: dict[str, object] = {}

    def serve() -> None:
        connection, _ = listener.accept()
        try:
            with server_context.wrap_socket(connection, server_side=True) as tls:
                seen["peer"] = tls.getpeercert()
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as error:
            seen["error"] = error

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_context.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            assert tls.recv(2) == b"ok"
    finally:
        thread.join(timeout=10)
        listener.close()
    peer = seen["peer"]
    assert isinstance(peer, dict)
    subject = dict(pair[0] for pair in peer["subject"])
    return str(subject["commonName"])


def _client_context(ca_file: Path, identity: Identity | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    if identity is not None:
        context.load_cert_chain(identity.cert_file, identity.key_file)
    return context


@pytest.fixture
def pki(tmp_path: Path) -> LocalPki:
    return init_pki(tmp_path / "tls", ["registry", "trainer"], hosts=["cascade.example", "10.1.2.3"])


@pytest.mark.parametrize("server_name", ["127.0.0.1", "localhost", "registry", "cascade.example"])
def test_mutual_tls_handshake_the_server_sees_the_client_cn(pki: LocalPki, server_name: str) -> None:
    server = _server_context(pki, pki.identity("registry"))
    client = _client_context(pki.ca_file, pki.identity("trainer"))
    assert _handshake(server, client, server_name) == "trainer"


def test_a_name_not_in_the_certificate_fails_hostname_verification(pki: LocalPki) -> None:
    server = _server_context(pki, pki.identity("registry"))
    client = _client_context(pki.ca_file, pki.identity("trainer"))
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        _handshake(server, client, "elsewhere.example")


def test_a_client_trusting_another_ca_refuses_the_server(pki: LocalPki, tmp_path: Path) -> None:
    other = init_pki(tmp_path / "other", ["stranger"])
    server = _server_context(pki, pki.identity("registry"))
    client = _client_context(other.ca_file, other.identity("stranger"))
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        _handshake(server, client, "localhost")


def test_the_san_lists_the_name_loopback_and_the_extra_hosts(pki: LocalPki) -> None:
    certificate = x509.load_pem_x509_certificate(pki.identity("trainer").cert_file.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {"trainer", "localhost", "cascade.example"}
    assert {str(address) for address in names.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1",
        "::1",
        "10.1.2.3",
    }


def test_keys_are_private_and_the_directory_too(pki: LocalPki) -> None:
    assert stat.S_IMODE(pki.directory.stat().st_mode) == 0o700
    for key in pki.directory.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert sorted(path.name for path in pki.directory.glob("*.key")) == [
        "ca.key",
        "registry.key",
        "trainer.key",
    ]


def test_init_again_keeps_the_ca_and_certificates_and_adds_new_names(pki: LocalPki) -> None:
    before = {path.name: path.read_bytes() for path in pki.directory.iterdir()}
    again = init_pki(pki.directory, ["registry", "trainer", "serving"])
    after = {path.name: path.read_bytes() for path in again.directory.iterdir()}
    assert {name: after[name] for name in before} == before
    # The new name verifies under the kept CA.
    server = _server_context(again, again.identity("serving"))
    assert (
        _handshake(server, _client_context(pki.ca_file, pki.identity("registry")), "localhost") == "registry"
    )


def test_force_makes_a_new_ca_and_new_leaves(pki: LocalPki) -> None:
    old_ca = pki.ca_file.read_bytes()
    old_leaf = pki.identity("registry").cert_file.read_bytes()
    renewed = init_pki(pki.directory, ["registry"], force=True)
    assert renewed.ca_file.read_bytes() != old_ca
    assert renewed.identity("registry").cert_file.read_bytes() != old_leaf
    server = _server_context(renewed, renewed.identity("registry"))
    client = _client_context(renewed.ca_file, renewed.identity("registry"))
    assert _handshake(server, client, "localhost") == "registry"
    # trainer was not named: its leaf, signed by the old CA, no longer verifies under the new one.
    stale = _server_context(renewed, renewed.identity("trainer"))
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(stale, _client_context(renewed.ca_file, None), "localhost")


def test_load_and_missing_identities(pki: LocalPki, tmp_path: Path) -> None:
    assert load_pki(tmp_path / "nowhere") is None
    assert load_pki(pki.directory) == pki
    with pytest.raises(FileNotFoundError, match="no certificate for 'ghost'"):
        pki.identity("ghost")


@pytest.mark.parametrize("bad", ["bad host!", "../escape", "-leading.example", ""])
def test_a_name_or_host_that_no_certificate_can_hold_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="neither an IP address nor a DNS name"):
        init_pki(tmp_path / "tls", ["ingest"], hosts=[bad])
    with pytest.raises(ValueError, match="neither an IP address nor a DNS name"):
        init_pki(tmp_path / "tls", [bad])
    assert not (tmp_path / "tls").exists()
