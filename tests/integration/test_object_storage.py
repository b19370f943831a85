"""The real stack with two replicas each of ingest and registry, their artifacts and segments in S3
(moto's server, a real S3 API in its own process) and their metadata in one database per service: a
batch cascades to a served model and the bucket holds the segment and the artifact under their
digests; the second ingest replica, which never saw the first batch, takes the next one (reading the
first segment from the bucket) and it cascades too; the second registry replica serves both models'
artifacts, fetched from the bucket and verified. A stack of its own (its own Kafka and ports,
265xx), since the session stack keeps its files locally; the secret key reaches the services as a
file and appears in none of their logs."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from cascade import AsyncClient
from cascade.stack import SERVICES, Stack, StackConfig
from tests.integration.support import infer, model_ready, upload, wait_for
from tests.s3_server import ACCESS_KEY_ID, SECRET_ACCESS_KEY, S3Server, s3_server_fixture  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CASCADE_TIMEOUT = 180.0
PORTS = {
    "ingest": 26551,
    "trainer": 26552,
    "validator": 26553,
    "registry": 26554,
    "monitor": 26555,
    "serving": 26581,  # REST one below: 26580
}
# Second replicas listen 10 above: ingest-2 on 26561, registry-2 on 26564.
REPLICAS = {"ingest": 2, "registry": 2}


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> str:
    return s3_server.new_bucket()


@pytest.fixture(scope="module")
def s3_stack(s3_server: S3Server, bucket: str) -> Iterator[Stack]:
    home = Path(tempfile.mkdtemp(prefix="cascade-s3-"))
    secret_file = home / "s3-secret"
    secret_file.write_text(SECRET_ACCESS_KEY)
    settings = s3_server.settings()
    s3_env: dict[str, str] = {}
    for service in ("REGISTRY", "INGEST"):
        s3_env |= {
            f"CASCADE_{service}_S3_ENDPOINT_URL": settings.s3_endpoint_url,
            f"CASCADE_{service}_S3_REGION": settings.s3_region,
            f"CASCADE_{service}_S3_ACCESS_KEY_ID": settings.s3_access_key_id,
            f"CASCADE_{service}_S3_SECRET_ACCESS_KEY_FILE": str(secret_file),
        }
    config = StackConfig(
        home=home,
        kafka_port=26570,
        controller_port=26571,
        topic_prefix="s3it",
        ports=PORTS,
        metrics_ports={},
        replicas=REPLICAS,
        extra_env={
            # Each service's replicas share one database (SQLite in WAL mode, on this one machine).
            "CASCADE_INGEST_DATABASE_URL": f"sqlite:///{home}/ingest.sqlite3",
            "CASCADE_REGISTRY_DATABASE_URL": f"sqlite:///{home}/registry.sqlite3",
            **s3_env,
            "CASCADE_REGISTRY_ARTIFACT_URL": f"s3://{bucket}/artifacts",
            "CASCADE_INGEST_SEGMENT_URL": f"s3://{bucket}/segments",
            # Even at DEBUG, no credentials in their logs.
            "CASCADE_REGISTRY_LOG_LEVEL": "DEBUG",
            "CASCADE_INGEST_LOG_LEVEL": "DEBUG",
        },
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AWS_"))}
    stack = Stack(config, environ=environ)
    try:
        stack.start(SERVICES, timeout=180)
        yield stack
    finally:
        stack.stop()
        logs = "".join(path.read_text(errors="replace") for path in (home / "logs").glob("*"))
        if not os.environ.get("CASCADE_KEEP_TEST_STACK"):
            shutil.rmtree(home, ignore_errors=True)
    assert '"level": "debug"' in logs
    assert SECRET_ACCESS_KEY not in logs and ACCESS_KEY_ID not in logs


def _keys(s3_server: S3Server, bucket: str, prefix: str) -> set[str]:
    listed = s3_server.client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {item["Key"].rsplit("/", 1)[-1] for item in listed}


async def test_replicas_on_s3_cascade_and_serve_what_the_other_replica_stored(
    s3_stack: Stack, s3_server: S3Server, bucket: str
) -> None:
    model = "bc_s3"
    frame = load_breast_cancer(as_frame=True).frame.sample(frac=1.0, random_state=3).reset_index(drop=True)
    first, second = frame.iloc[:341], frame.iloc[341:]  # as tests/integration/test_cascade.py
    features = first.drop(columns="target").to_numpy(np.float32)

    response, _ = upload(s3_stack, model, first)
    assert response.created
    wait_for(lambda: model_ready(s3_stack, model, "1"), CASCADE_TIMEOUT, "serving to load version 1")
    async with AsyncClient(
        {name: s3_stack.address(name) for name in ("ingest", "registry")}, security=s3_stack.client_security
    ) as client:
        (segment,) = (await client.ingest.get_dataset_version(model, response.dataset_version)).segments
        v1 = await client.registry.get_version(model, 1)
        assert _keys(s3_server, bucket, "segments/") == {f"{segment}.parquet"}
        assert _keys(s3_server, bucket, "artifacts/") == {v1.artifact_sha256}

    # The second ingest replica has none of the first batch's files: it reads the first segment
    # from the bucket to find which of the new rows the dataset already holds.
    second_ingest = s3_stack.data_dir("ingest-2") / "segments"
    assert not list(second_ingest.glob("*.parquet"))
    async with AsyncClient(
        {"ingest": s3_stack.address("ingest-2"), "registry": s3_stack.address("registry-2")},
        security=s3_stack.client_security,
    ) as replicas:
        uploaded = await replicas.ingest.upload_batch(second.to_csv(index=False).encode(), model)
        assert uploaded.created and uploaded.report.rows_duplicate == 0
        assert (second_ingest / f"{segment}.parquet").exists()  # fetched, verified
        wait_for(
            lambda: infer(s3_stack, model, features[:4])[0] == "2",
            CASCADE_TIMEOUT,
            "serving to swap to version 2 (trained on both segments)",
        )
        version_two = await replicas.ingest.get_dataset_version(model, uploaded.dataset_version)
        assert version_two.rows == len(frame) and len(version_two.segments) == 2
        assert len(_keys(s3_server, bucket, "segments/")) == 2
        v2 = await replicas.registry.get_version(model, 2)
        assert _keys(s3_server, bucket, "artifacts/") == {v1.artifact_sha256, v2.artifact_sha256}
        # Callers spread over both registry replicas, so either may hold copies: the second one's
        # are removed (a replica just started), and it serves both versions from the bucket.
        cache = s3_stack.data_dir("registry-2") / "artifact-cache"
        shutil.rmtree(cache, ignore_errors=True)
        for version in (v1, v2):
            artifact = await replicas.registry.download_artifact(model, version.version)
            assert hashlib.sha256(artifact).hexdigest() == version.artifact_sha256
        assert {path.name for path in cache.glob("*/*")} == {v1.artifact_sha256, v2.artifact_sha256}
        _, downloaded = await replicas.ingest.download_dataset(model, uploaded.dataset_version)
        assert len(downloaded) == len(frame)
