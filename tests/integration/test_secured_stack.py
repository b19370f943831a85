"""The secured configuration, end to end: TLS on every gRPC hop, every service requiring an
authenticated principal with the method's role, Kafka on SASL_SSL with SCRAM. The real launcher
starts it (`cascade up --tls --auth --kafka-security` does the same) on ports apart from the shared
test stack; tests/integration/test_kafka_security.py tries the secured broker alone."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from sklearn.datasets import load_breast_cancer
from typer.testing import CliRunner

from cascade.cli.main import app
from cascade.client.channels import ClientSecurity
from cascade.grpc_io import open_blocking_channel
from cascade.security import (
    PrincipalEntry,
    Principals,
    hash_token,
    new_token,
    write_principals,
)
from cascade.stack import SERVICES, Stack, StackConfig
from cascade.stack.identities import ensure_tokens, principals_file, secrets_dir, token_file
from cascade.stubs.cascade.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from cascade.stubs.cascade.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from cascade.stubs.cascade.registry.v1 import registry_pb2, registry_pb2_grpc
from cascade.stubs.cascade.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from tests.integration.support import infer, model_ready, spans_of_trace, triton_client, upload, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PORTS = {
    "ingest": 25051,
    "trainer": 25052,
    "validator": 25053,
    "registry": 25054,
    "monitor": 25055,
    "serving": 25001,
}
MODEL = "bc_secured"
READER = "auditor"
WEBHOOK_SECRET = "webhook-" + new_token()


def _add_reader(home: Path) -> str:
    """A principal holding the `reader` bundle, added the way an operator would: a token of its
    own and an entry in the principals file, which the launcher keeps."""
    secrets = secrets_dir(home)
    ensure_tokens(secrets)
    token = new_token()
    token_file(secrets, READER).write_text(token)
    entries = list(Principals.load(principals_file(secrets)).entries.values())
    reader = PrincipalEntry(
        READER, frozenset({"ingest:read", "monitor:read", "registry:read"}), hash_token(token)
    )
    write_principals(principals_file(secrets), [*entries, reader])
    return token


@pytest.fixture(scope="module")
def secured() -> Iterator[tuple[Stack, str]]:
    home = Path(tempfile.mkdtemp(prefix="cascade-secured-"))
    reader_token = _add_reader(home)
    config = StackConfig(
        home=home,
        kafka_port=25092,
        controller_port=25093,
        topic_prefix="sec",
        ports=PORTS,
        metrics_ports={},
        tls=True,
        auth=True,
        kafka_security=True,
        extra_env={
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            # Signs webhook bodies; no URL is set, so it only has to stay out of every output.
            "CASCADE_REGISTRY_WEBHOOK_SECRET": WEBHOOK_SECRET,
        },
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    stack = Stack(config, environ=environ)
    try:
        stack.start(SERVICES, timeout=240)
        yield stack, reader_token
    finally:
        stack.stop()
    if not os.environ.get("CASCADE_KEEP_TEST_STACK"):
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def served(secured: tuple[Stack, str]) -> tuple[Stack, str]:
    """One cascade, upload to served model, as the stack's admin: returns the upload's trace id."""
    stack, _ = secured
    frame = load_breast_cancer(as_frame=True).frame.sample(frac=1.0, random_state=5).reset_index(drop=True)
    response, trace_id = upload(stack, MODEL, frame)
    assert response.created
    wait_for(lambda: model_ready(stack, MODEL, "1"), 180, "the secured cascade to serve version 1")
    version, labels = infer(stack, MODEL, frame.drop(columns="target").to_numpy(np.float32)[:16])
    assert version == "1" and np.mean(labels == frame["target"].to_numpy()[:16]) > 0.8
    return stack, trace_id


def _security(stack: Stack, token: str = "") -> ClientSecurity:
    """A client trusting the stack's CA, with the given token (none: anonymous)."""
    return ClientSecurity(token=token, ca_file=stack.client_security.ca_file)


def _code(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    error = raised.value
    assert isinstance(error, grpc.Call)
    return error.code()


def _hostile_sequence(stack: Stack, security: ClientSecurity) -> dict[str, grpc.StatusCode]:
    """What an attacker tried against the unsecured default: each step's status code."""
    onnx = b"\x08\x07"  # never read: the call must be refused before
    with (
        open_blocking_channel(stack.address("registry"), security) as registry_channel,
        open_blocking_channel(stack.address("ingest"), security) as ingest_channel,
        open_blocking_channel(stack.address("trainer"), security) as trainer_channel,
    ):
        registry = registry_pb2_grpc.RegistryServiceStub(registry_channel)
        ingest = ingest_pb2_grpc.IngestServiceStub(ingest_channel)
        trainer = trainer_pb2_grpc.TrainerServiceStub(trainer_channel)
        upload_version = [
            registry_pb2.CreateModelVersionRequest(
                header=registry_pb2.VersionHeader(model="evil", dataset="d", dataset_version="v")
            ),
            registry_pb2.CreateModelVersionRequest(chunk=onnx),
        ]
        batch = [
            ingest_pb2.UploadBatchRequest(header=ingest_pb2.BatchHeader(dataset=MODEL, target="target")),
            ingest_pb2.UploadBatchRequest(chunk=b"a,target\n1,0\n"),
        ]
        steps: dict[str, Callable[[], Any]] = {
            "register a model": lambda: registry.RegisterModel(
                registry_pb2.RegisterModelRequest(name="evil")
            ),
            "upload an artifact": lambda: registry.CreateModelVersion(iter(upload_version)),
            "grant itself MANAGE": lambda: registry.SetModelPermission(
                registry_pb2.SetModelPermissionRequest(
                    model=MODEL, principal=READER, level=registry_pb2.PERMISSION_LEVEL_MANAGE
                )
            ),
            "set a training spec": lambda: registry.SetTrainingSpec(
                registry_pb2.SetTrainingSpecRequest(model=MODEL, spec_json="{}")
            ),
            "trigger training": lambda: trainer.RequestTraining(
                trainer_pb2.RequestTrainingRequest(model=MODEL)
            ),
            "force-promote version 1": lambda: registry.SetAlias(
                registry_pb2.SetAliasRequest(model=MODEL, alias="champion", version=1, force=True)
            ),
            "upload a batch": lambda: ingest.UploadBatch(iter(batch)),
            "register a dataset": lambda: ingest.RegisterDataset(
                ingest_pb2.RegisterDatasetRequest(dataset="evil")
            ),
        }
        return {step: _code(call) for step, call in steps.items()}


def _infer_code(stack: Stack, token: str) -> grpc.StatusCode:
    security = stack.client_security
    client = triton.InferenceServerClient(
        url=stack.address("serving"), ssl=True, root_certificates=str(security.ca_file)
    )
    request = triton.InferInput("input", [1, 30], "FP32")
    request.set_data_from_numpy(np.zeros((1, 30), np.float32))
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        with pytest.raises(triton.InferenceServerException) as raised:
            client.infer(MODEL, [request], headers=headers)
    finally:
        client.close()
    return grpc.StatusCode[str(raised.value.status()).removeprefix("StatusCode.")]


def test_the_hostile_sequence_is_refused_at_every_step(
    served: tuple[Stack, str], secured: tuple[Stack, str]
) -> None:
    stack, _ = served
    _, reader_token = secured
    history_before = _history(stack)

    anonymous = _hostile_sequence(stack, _security(stack))
    assert anonymous == dict.fromkeys(anonymous, grpc.StatusCode.UNAUTHENTICATED)
    reader = _hostile_sequence(stack, _security(stack, reader_token))
    assert reader == dict.fromkeys(reader, grpc.StatusCode.PERMISSION_DENIED)
    assert _infer_code(stack, "") == grpc.StatusCode.UNAUTHENTICATED
    assert _infer_code(stack, reader_token) == grpc.StatusCode.PERMISSION_DENIED

    # Nothing moved, and a plaintext client cannot even talk to a TLS port.
    assert _history(stack) == history_before
    assert _code(lambda: _history(stack, ClientSecurity(token=stack.client_security.token))) == (
        grpc.StatusCode.UNAVAILABLE
    )
    # What the reader may do, it can: read the registry and the monitor.
    with open_blocking_channel(stack.address("registry"), _security(stack, reader_token)) as channel:
        model = registry_pb2_grpc.RegistryServiceStub(channel).GetModel(
            registry_pb2.GetModelRequest(name=MODEL)
        )
        assert model.name == MODEL and READER not in model.permissions
    with open_blocking_channel(stack.address("monitor"), _security(stack, reader_token)) as channel:
        monitor = monitor_pb2_grpc.MonitorServiceStub(channel)
        assert _code(lambda: monitor.GetDriftReport(monitor_pb2.GetDriftReportRequest(model="nobody"))) == (
            grpc.StatusCode.NOT_FOUND  # authenticated and allowed; there is just no such report
        )


def _history(stack: Stack, security: ClientSecurity | None = None) -> list[tuple[int, int, str]]:
    with open_blocking_channel(stack.address("registry"), security or stack.client_security) as channel:
        moves = registry_pb2_grpc.RegistryServiceStub(channel).GetAliasHistory(
            registry_pb2.GetAliasHistoryRequest(model=MODEL), timeout=10
        )
    return [(m.from_version, m.to_version, m.actor) for m in moves.moves]


def test_the_cascade_ran_as_the_services_own_principals(served: tuple[Stack, str]) -> None:
    stack, trace_id = served
    assert _history(stack) == [(0, 1, "validator")]
    spans = wait_for(
        lambda: [s for s in spans_of_trace(stack, trace_id) if _attribute(s, "enduser.id")] or None,
        30,
        "spans naming their callers",
    )
    callers = {(s["service.name"], s["name"], _attribute(s, "enduser.id")) for s in spans}
    # The admin uploaded; the trainer fetched the data and uploaded the model; serving, the
    # validator and the monitor read with their own identities.
    assert ("cascade-ingest", "/cascade.ingest.v1.IngestService/UploadBatch", "admin") in callers
    assert (
        "cascade-registry",
        "/cascade.registry.v1.RegistryService/CreateModelVersion",
        "trainer",
    ) in callers
    assert any(service == "cascade-ingest" and who == "trainer" for service, _, who in callers)
    assert any(service == "cascade-registry" and who == "validator" for service, _, who in callers)


def _attribute(span: dict[str, Any], key: str) -> str | None:
    for attribute in span.get("attributes", []):
        if attribute["key"] == key:
            return str(attribute["value"].get("stringValue"))
    return None


def test_the_cli_reads_the_secured_kafka_and_a_plaintext_client_cannot(served: tuple[Stack, str]) -> None:
    """The CLI finds the stack's Kafka settings in its home (lag per service comes from the broker,
    dead letters from their topic); a client that does not speak SASL_SSL gets nothing."""
    stack, _ = served
    status = CliRunner().invoke(app, ["--home", str(stack.home), "status", "--json"])
    assert status.exit_code == 0, status.output
    rows = {row["name"]: row for row in json.loads(status.stdout)}
    assert rows["trainer"]["lag"] is not None, status.output
    listed = CliRunner().invoke(app, ["--home", str(stack.home), "dlq", "list"])
    assert listed.exit_code == 0, listed.output

    async def connect_in_plaintext() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=stack.address("kafka"), request_timeout_ms=5000)
        try:
            await consumer.start()
        finally:
            await consumer.stop()

    with pytest.raises(KafkaConnectionError):
        asyncio.run(connect_in_plaintext())


def test_tritonclient_over_tls_gets_answers(served: tuple[Stack, str]) -> None:
    stack, _ = served
    client, headers = triton_client(stack)
    try:
        assert client.is_server_live(headers={})  # health stays open
        metadata = client.get_model_metadata(MODEL, headers=headers)
        assert metadata.name == MODEL
        rows = np.asarray(load_breast_cancer().data[:4], np.float32)
        request = triton.InferInput("input", [4, 30], "FP32")
        request.set_data_from_numpy(rows)
        result = client.infer(MODEL, [request], headers=headers)
        labels = result.as_numpy("label")
        assert labels is not None and labels.shape == (4,)
    finally:
        client.close()


def test_grpcurl_style_clients_discover_serving_over_tls_without_credentials(
    served: tuple[Stack, str],
) -> None:
    """Reflection stays open, as grpcurl needs it: only the CA is required to list the services."""
    stack, _ = served
    with open_blocking_channel(stack.address("serving"), _security(stack)) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert "inference.GRPCInferenceService" in services
        pool = DescriptorPool(database)
        infer = pool.FindServiceByName("inference.GRPCInferenceService").methods_by_name["ModelInfer"]
        assert infer.input_type.full_name == "inference.ModelInferRequest"


def test_no_secret_appears_in_logs_traces_events_or_status(served: tuple[Stack, str]) -> None:
    stack, _ = served
    secrets = {path.name: path.read_text().strip() for path in (stack.home / "secrets").iterdir()}
    secret_values = {name: value for name, value in secrets.items() if not name.endswith(".toml")}
    secret_values["webhook secret"] = WEBHOOK_SECRET
    assert len(secret_values) >= 7, secret_values.keys()  # admin, six services, the Kafka password

    # A wrong token's error names no token.
    wrong = "wrong-" + new_token()
    with (
        open_blocking_channel(stack.address("registry"), _security(stack, wrong)) as channel,
        pytest.raises(grpc.RpcError) as raised,
    ):
        registry_pb2_grpc.RegistryServiceStub(channel).ListModels(registry_pb2.ListModelsRequest())
    assert wrong not in str(raised.value.details())  # type: ignore[attr-defined]

    status = CliRunner().invoke(app, ["--home", str(stack.home), "status", "--json"])
    assert status.exit_code == 0, status.output
    haystacks = {"cascade status --json": status.output}
    for directory in ("logs", "traces", "run", "kafka"):
        for path in (stack.home / directory).rglob("*"):
            if path.is_file() and path.suffix in {".log", ".out", ".jsonl", ".json", ".txt", ""}:
                haystacks[str(path.relative_to(stack.home))] = path.read_text(errors="replace")
    haystacks |= _kafka_messages(stack)
    assert len(haystacks) > 10
    for where, text in haystacks.items():
        for name, value in secret_values.items():
            assert value not in text, f"{name} leaked into {where}"
        assert not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", text), f"a private key in {where}"


def _kafka_messages(stack: Stack) -> dict[str, str]:
    """Every record on the stack's topics (events, dead letters), as text."""

    async def read() -> dict[str, str]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=stack.address("kafka"),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **stack.kafka_client_options(),
        )
        await consumer.start()
        try:
            topics = [t for t in await consumer.topics() if t.startswith("sec.")]
            consumer.subscribe(topics)
            seen: dict[str, list[str]] = {}
            for _ in range(10):
                batches = await consumer.getmany(timeout_ms=1000)
                if not batches and seen:
                    break
                for partition, records in batches.items():
                    for record in records:
                        headers = " ".join(f"{k}={v!r}" for k, v in record.headers)
                        seen.setdefault(partition.topic, []).append(f"{record.value!r} {headers}")
            return {f"kafka topic {topic}": "\n".join(lines) for topic, lines in seen.items()}
        finally:
            await consumer.stop()

    messages = asyncio.run(read())
    assert any("model-promoted" in topic or "promoted" in topic for topic in messages), messages.keys()
    return messages
