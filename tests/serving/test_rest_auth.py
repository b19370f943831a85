"""REST and security: each endpoint needs what its gRPC twin needs (cascade.security), from a bearer
token in the Authorization header, health staying open; TLS and mTLS with the gRPC server's files."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import ssl
from pathlib import Path

import httpx
import pytest

from cascade.stack.certs import LocalPki, init_pki

from .harness import ServingProcess
from .support import MODEL, Dataset, RunningRegistry

INFER = f"/v2/models/{MODEL}/infer"

pytestmark = pytest.mark.slow  # each test starts a serving process of its own


async def test_rest_needs_the_same_roles_as_grpc(
    registry: RunningRegistry, dataset: Dataset, tmp_path: Path
) -> None:
    """With authentication required: health is open, inference needs a bearer token whose principal
    holds serving:infer (cascade.security's principals file, as gRPC reads it)."""
    tokens = {"client": secrets.token_urlsafe(32), "reader": secrets.token_urlsafe(32)}
    roles = {"client": "serving:infer", "reader": "ingest:read"}
    principals = tmp_path / "principals.toml"
    principals.write_text(
        "".join(
            f'[principals.{name}]\ntoken_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
            f'roles = ["{roles[name]}"]\n'
            for name, token in tokens.items()
        )
    )
    settings = {
        "CASCADE_SERVING_AUTH_REQUIRED": "true",
        "CASCADE_SERVING_AUTH_PRINCIPALS_FILE": str(principals),
    }
    serving = await ServingProcess.start(registry.address, env=settings)
    try:
        async with httpx.AsyncClient(base_url=f"http://{serving.http_url}") as http:
            assert (await http.get("/v2/health/live")).status_code == 200  # open to all

            async def infer(authorization: str | None) -> httpx.Response:
                headers = {"Authorization": authorization} if authorization else {}
                return await http.post(INFER, json=one_row(dataset), headers=headers)

            for _ in range(600):  # polling a remote service: up to 30 s
                if (await http.get(f"/v2/models/{MODEL}/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            # Open to all too; ready once the champion is loaded (not before: readiness.py).
            assert (await http.get("/v2/health/ready")).status_code == 200
            refused = await infer(None)
            assert refused.status_code == 401
            assert "needs a bearer token" in refused.json()["error"]
            assert (await infer("Bearer not-a-token")).json() == {"error": "unknown token"}
            assert (await infer(f"Basic {tokens['client']}")).status_code == 401
            denied = await infer(f"Bearer {tokens['reader']}")
            assert denied.status_code == 403
            assert denied.json() == {"error": "reader lacks the role serving:infer for ModelInfer"}
            metadata = await http.get(f"/v2/models/{MODEL}", headers={"Authorization": "Bearer nope"})
            assert metadata.status_code == 401
            allowed = await infer(f"Bearer {tokens['client']}")
            assert (allowed.status_code, allowed.json()["model_version"]) == (200, "1")
            # No token in any answer, nor in the refusals above.
            assert all(token not in (refused.text + denied.text) for token in tokens.values())
    finally:
        await serving.stop()


def one_row(dataset: Dataset) -> dict[str, object]:
    return {
        "inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": dataset.rows[0].tolist()}]
    }


# -- TLS ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPki:
    return init_pki(tmp_path_factory.mktemp("pki"), ["serving", "client"])


def tls_context(pki: LocalPki, identity: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    if identity is not None:
        client = pki.identity(identity)
        context.load_cert_chain(str(client.cert_file), str(client.key_file))
    return context


async def test_rest_serves_https_with_the_grpc_certificate(
    registry: RunningRegistry, dataset: Dataset, pki: LocalPki
) -> None:
    server = pki.identity("serving")
    settings = {
        "CASCADE_SERVING_TLS_CERT_FILE": str(server.cert_file),
        "CASCADE_SERVING_TLS_KEY_FILE": str(server.key_file),
    }
    serving = await ServingProcess.start(registry.address, env=settings)
    try:
        async with httpx.AsyncClient(
            base_url=f"https://{serving.http_url}", verify=tls_context(pki)
        ) as https:
            for _ in range(600):  # polling a remote service: up to 30 s
                if (await https.get(f"/v2/models/{MODEL}/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            answer = await https.post(INFER, json=one_row(dataset))
            assert (answer.status_code, answer.json()["model_version"]) == (200, "1")
        async with httpx.AsyncClient(base_url=f"http://{serving.http_url}") as plain:
            with pytest.raises(httpx.HTTPError):  # no plaintext beside TLS
                await plain.get("/v2/health/live")
    finally:
        await serving.stop()


async def test_rest_under_mtls_requires_a_client_certificate(
    registry: RunningRegistry, pki: LocalPki, tmp_path: Path
) -> None:
    server = pki.identity("serving")
    settings = {
        "CASCADE_SERVING_TLS_CERT_FILE": str(server.cert_file),
        "CASCADE_SERVING_TLS_KEY_FILE": str(server.key_file),
        "CASCADE_SERVING_TLS_CA_FILE": str(pki.ca_file),
        "CASCADE_SERVING_TLS_REQUIRE_CLIENT_CERT": "true",
    }
    serving = await ServingProcess.start(registry.address, env=settings)
    try:
        url = f"https://{serving.http_url}/v2/health/live"
        async with httpx.AsyncClient(verify=tls_context(pki, "client")) as with_certificate:
            assert (await with_certificate.get(url)).json() == {"live": True}
        async with httpx.AsyncClient(verify=tls_context(pki)) as without_certificate:
            with pytest.raises(httpx.HTTPError):
                await without_certificate.get(url)
        foreign = init_pki(tmp_path / "foreign", ["client"])
        async with httpx.AsyncClient(verify=_mixed_context(pki, foreign)) as another_ca:
            with pytest.raises(httpx.HTTPError):  # a certificate, but signed by another CA
                await another_ca.get(url)
    finally:
        await serving.stop()


def _mixed_context(trusted: LocalPki, presented: LocalPki) -> ssl.SSLContext:
    """Trusts `trusted`'s CA, presents `presented`'s client certificate."""
    context = ssl.create_default_context(cafile=str(trusted.ca_file))
    client = presented.identity("client")
    context.load_cert_chain(str(client.cert_file), str(client.key_file))
    return context
