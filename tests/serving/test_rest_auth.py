"""REST and authentication: each endpoint needs what its gRPC twin needs (shared.security), from a
bearer token in the Authorization header; health stays open."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from pathlib import Path

import httpx

from .harness import ServingProcess
from .support import MODEL, Dataset, RunningRegistry

INFER = f"/v2/models/{MODEL}/infer"


async def test_rest_needs_the_same_roles_as_grpc(
    registry: RunningRegistry, dataset: Dataset, tmp_path: Path
) -> None:
    """With authentication required: health is open, inference needs a bearer token whose principal
    holds serving:infer (shared.security's principals file, as gRPC reads it)."""
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
            assert (await http.get("/v2/health/ready")).status_code == 200

            async def infer(authorization: str | None) -> httpx.Response:
                headers = {"Authorization": authorization} if authorization else {}
                return await http.post(INFER, json=one_row(dataset), headers=headers)

            for _ in range(600):  # polling a remote service: up to 30 s
                if (await http.get(f"/v2/models/{MODEL}/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
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
