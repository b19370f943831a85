"""The registry's domain: versions with lineage, aliases with an audit trail, promotion on validation."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import onnx
from prometheus_client import Counter

from services.registry.artifacts import ArtifactStore
from services.registry.store import RegistryStore, VersionRecord
from shared.clients import unavailable_as_retryable
from shared.errors import FailedPrecondition, InvalidArgument, NotFound
from shared.events import Event, ModelPromoted, ModelValidated
from shared.grpc_io import ReceivedFile
from shared.names import ALIAS_PATTERN, check_name
from shared.stubs.cascade.ingest.v1 import ingest_pb2, ingest_pb2_grpc

log = logging.getLogger(__name__)

SOURCE = "cascade/registry"
PROMOTIONS = Counter("cascade_registry_alias_moves_total", "Alias moves.", ["model", "alias", "actor"])

Publish = Callable[[Event], Awaitable[None]]

_ONNX_TYPES = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.STRING: "BYTES",
}


def onnx_signature(path: Any) -> dict[str, list[dict[str, Any]]]:
    """Input and output names, datatypes and shapes (-1 for dynamic dims) read from the ONNX graph."""
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:
        raise InvalidArgument(f"artifact is not a valid ONNX model: {exc}") from exc

    def describe(values: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": value.name,
                "datatype": _ONNX_TYPES.get(value.type.tensor_type.elem_type, "UNKNOWN"),
                "shape": [
                    d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim
                ],
            }
            for value in values
        ]

    return {"inputs": describe(graph.input), "outputs": describe(graph.output)}


@dataclass
class NewVersion:
    model: str
    dataset: str
    dataset_version: str
    run: dict[str, Any]
    idempotency_key: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""


class RegistryCore:
    def __init__(self, store: RegistryStore, artifacts: ArtifactStore, publish: Publish, policy: str) -> None:
        self.store = store
        self.artifacts = artifacts
        self.publish = publish
        self.policy = policy

    def create_version(self, spec: NewVersion, upload: ReceivedFile) -> VersionRecord:
        """Store the artifact and record the version. A repeated idempotency key returns the first version."""
        check_name("model", spec.model)
        if spec.idempotency_key:
            existing = self.store.find_by_key(spec.model, spec.idempotency_key)
            if existing is not None:
                upload.discard()
                return existing
        signature = onnx_signature(upload.path)
        self.artifacts.put(upload.path, upload.sha256)
        with self.store.transaction() as db:
            version = self.store.insert_version(
                db,
                {
                    "model": spec.model,
                    "artifact_sha256": upload.sha256,
                    "artifact_size": upload.size,
                    "dataset": spec.dataset,
                    "dataset_version": spec.dataset_version,
                    "run": spec.run,
                    "tags": spec.tags,
                    "signature": signature,
                    "idempotency_key": spec.idempotency_key,
                    "description": spec.description,
                },
            )
        log.info("registered %s version %d (artifact %s)", spec.model, version, upload.sha256[:12])
        return self.store.get(spec.model, version)

    def resolve(
        self, model: str, version: int = 0, alias: str = "", idempotency_key: str = ""
    ) -> VersionRecord:
        check_name("model", model)
        if idempotency_key:
            found = self.store.find_by_key(model, idempotency_key)
            if found is None:
                raise NotFound(f"model {model!r} has no version with idempotency key {idempotency_key!r}")
            return found
        if alias:
            target = self.store.alias_target(model, check_name("alias", alias, ALIAS_PATTERN))
            if target is None:
                raise NotFound(f"model {model!r} has no alias {alias!r}")
            return self.store.get(model, target)
        if version <= 0:
            raise InvalidArgument("give a version number, an alias or an idempotency key")
        return self.store.get(model, version)

    async def set_alias(self, model: str, alias: str, version: int, actor: str, reason: str) -> VersionRecord:
        check_name("alias", alias, ALIAS_PATTERN)
        self.store.get(model, version)  # NotFound before anything moves
        with self.store.transaction() as db:
            previous = self.store.move_alias(db, model, alias, version, actor or "unknown", reason)
            if alias == "champion" and previous != version:
                self.store.enqueue(db, _promoted(model, version, previous, actor, reason).model_dump_json())
        PROMOTIONS.labels(model, alias, actor or "unknown").inc()
        await self.flush_outbox()
        return self.store.get(model, version)

    async def on_validated(self, event: ModelValidated) -> None:
        """Record the verdict once and, if it passed, move the alias the policy asks for.

        Idempotent: a redelivered verdict finds the version already judged and only flushes the
        outbox, which publishes anything a crash left unpublished."""
        record = self.store.get(event.model, event.model_version)
        if record.validation is None:
            alias = "champion" if self.policy == "automatic" else "challenger"
            reason = f"validation {event.id}: " + ("passed" if event.passed else "failed")
            if event.cause is not None:  # the history says why this version was trained at all
                reason += (
                    f"; retrained because {event.cause.kind} was detected "
                    f"(event {event.cause.event_id}): {event.cause.summary}"
                )
            with self.store.transaction() as db:
                self.store.set_validation(db, event.model, event.model_version, event.model_dump(mode="json"))
                if event.passed:
                    previous = self.store.move_alias(
                        db, event.model, alias, event.model_version, "validator", reason
                    )
                    if alias == "champion":
                        self.store.enqueue(
                            db,
                            _promoted(
                                event.model, event.model_version, previous, "validator", reason, event
                            ).model_dump_json(),
                        )
                    PROMOTIONS.labels(event.model, alias, "validator").inc()
            log.info(
                "%s v%d validation %s",
                event.model,
                event.model_version,
                "passed" if event.passed else "failed",
            )
        await self.flush_outbox()

    def set_training_spec(self, model: str, spec_json: str, actor: str) -> int:
        check_name("model", model)
        try:
            spec = json.loads(spec_json)
        except ValueError as exc:
            raise InvalidArgument(f"the training spec is not JSON: {exc}") from exc
        if not isinstance(spec, dict):
            raise InvalidArgument("the training spec must be a JSON object")
        return self.store.add_training_spec(model, json.dumps(spec, sort_keys=True), actor or "unknown")

    async def rollback(self, model: str, actor: str, reason: str) -> VersionRecord:
        """Point `champion` back at the version it held before its latest move."""
        moves = [move for move in self.store.history(model) if move["alias"] == "champion"]
        if not moves or moves[-1]["from_version"] is None:
            raise FailedPrecondition(f"model {model!r} has no previous champion to roll back to")
        previous = int(moves[-1]["from_version"])
        return await self.set_alias(
            model,
            "champion",
            previous,
            actor or "unknown",
            f"rollback from v{moves[-1]['to_version']}: {reason}",
        )

    async def flush_outbox(self) -> None:
        for event_id, event_json in await asyncio.to_thread(self.store.pending_events):
            await self.publish(ModelPromoted.model_validate_json(event_json))
            self.store.mark_published(event_id)


def _promoted(
    model: str, version: int, previous: int | None, actor: str, reason: str, cause: Event | None = None
) -> ModelPromoted:
    return ModelPromoted(
        source=SOURCE,
        subject=model,
        model=model,
        model_version=version,
        previous_version=previous,
        actor=actor,
        reason=reason,
        dataset_version=cause.dataset_version if cause else None,
        training_run=cause.training_run if cause else None,
    )


class Lineage:
    """Reads a version's lineage: its own record, then the dataset version's batches from ingest."""

    def __init__(self, core: RegistryCore, ingest: ingest_pb2_grpc.IngestServiceAsyncStub) -> None:
        self.core = core
        self.ingest = ingest

    async def of(self, model: str, version: int) -> tuple[VersionRecord, str, list[str]]:
        """(version record, parent dataset version, raw batch ids oldest first)."""
        record = self.core.resolve(model, version)
        try:
            dataset = await self.ingest.GetDatasetVersion(
                ingest_pb2.GetDatasetVersionRequest(dataset=record.dataset, version=record.dataset_version)
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"ingest no longer knows dataset version {record.dataset_version}") from exc
            raise unavailable_as_retryable(exc, "ingest: reading lineage") from exc
        return record, dataset.parent, list(dataset.batch_ids)
