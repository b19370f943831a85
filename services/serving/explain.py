"""Per-prediction explanations (cascade.explain.v1.Explainer) on serving's own gRPC server, computed
off the inference hot path.

Why here, and not a service of its own: an explanation is only worth having for the exact model
that answered, and KernelSHAP evaluates that model thousands of times per row (coalitions x
background rows). A separate explainer would have to follow the same promotions, fetch and verify
the same artifacts and keep the same versions loaded as serving already does, and would still
explain a copy; and calling serving over the network for each of its thousands of evaluations is
out of the question. So serving hosts Explain as a second gRPC service beside the inference one, on
the same port, names and versions: a request resolves its version with the same
`ModelRepository.resolve` as ModelInfer (NOT_FOUND unless this process serves it) and explains that
version's artifact, verified against the sha256 the registry recorded for it (content-addressed and
immutable: byte for byte what serving loaded).

How it stays off inference's way: ModelInfer's code path does not change, and no attribution is
computed in the serving process (on a shared machine it still competes for the cores: see
bench/serving/explain_interference.py and bench/RESULTS.md). Each explanation runs in a small
pool of its own processes (spawn, `explain_workers`, 1 by default) whose workers lower their CPU
priority (os.nice), so under load the kernel prefers the inference process; each worker keeps an
`OnnxExplainer` per version it explained (the artifact is sent to a worker only when it has none for
the version). The event loop only decodes the rows, checks them and waits. Requests are bounded: at most
`explain_max_concurrent` in flight per serving process (RESOURCE_EXHAUSTED beyond), and each within a
budget of rows, model evaluations and a deadline (the request's, lowered to the server's limits).

The background the Shapley values are measured against is the version's registry tag
`explain_background` (a sample of its training rows, written by the trainer); a version without it
is FAILED_PRECONDITION. Errors are INVALID_ARGUMENT (shape, datatype, NaN), NOT_FOUND,
FAILED_PRECONDITION, RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED; an explainer worker that fails
unexpectedly is FAILED_PRECONDITION naming the failure, a dead worker UNAVAILABLE: never INTERNAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import json
import logging
import math
import multiprocessing
import os
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import grpc
import numpy as np
from prometheus_client import Counter

from cascade.client.channels import PLAINTEXT, ClientSecurity
from cascade.client.registry import RegistryClient
from cascade.errors import (
    CascadeError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RemoteFailure,
    Unavailable,
    grpc_errors,
    truncate,
)
from cascade.grpc_io import ServicerContext
from cascade.services.serving.repository import LoadedModel, ModelRepository
from cascade.stubs.cascade.explain.v1 import explain_pb2 as pb
from cascade.stubs.cascade.explain.v1 import explain_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from cascade.explain import Explanation, OnnxExplainer

__all__ = [
    "BACKGROUND_TAG",
    "EXPLAIN_SERVICE_NAME",
    "ExplainBusy",
    "ExplainCore",
    "ExplainDeadline",
    "ExplainLimits",
    "ExplainPool",
    "ExplainQuery",
    "ExplainSubject",
    "ExplainerServicer",
    "RegistrySubjects",
    "SubjectSource",
    "parse_background",
    "query_of_json",
    "response_of",
    "rows_of",
]

log = logging.getLogger(__name__)

EXPLAIN_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Explainer"].full_name
BACKGROUND_TAG = "explain_background"
FEATURES_TAG = "features"
# Explainers each pool worker keeps built (per model version); a rebuild costs one session + background.
WORKER_CACHED_EXPLAINERS = 4
# Versions whose artifact and background the serving process keeps for its workers.
CACHED_SUBJECTS = 8
# How long past a budget's deadline the caller waits for a worker before answering DEADLINE_EXCEEDED
# (the explainer checks its deadline between batches of evaluations, not during one).
DEADLINE_GRACE_SECONDS = 5.0
_PR_SET_PDEATHSIG = 1

EXPLANATIONS = Counter(
    "cascade_serving_explanations_total", "Explain requests, by model and outcome.", ["model", "outcome"]
)


class ExplainBusy(CascadeError):
    """Every explanation slot is taken: RESOURCE_EXHAUSTED; the caller may retry later."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED
    permanent = False


class ExplainDeadline(CascadeError):
    """The explanation did not finish within its deadline: DEADLINE_EXCEEDED."""

    status = grpc.StatusCode.DEADLINE_EXCEEDED
    permanent = False


@dataclass(frozen=True)
class ExplainLimits:
    """The server's limits (ServingSettings' explain_*): a request's budget is lowered to them."""

    max_rows: int = 10
    max_evaluations: int = 2_000_000
    deadline_seconds: float = 30.0
    max_concurrent: int = 2
    background_rows: int = 100

    def budget(self, asked: pb.ExplainBudget) -> tuple[int, int, float]:
        """(max_rows, max_evaluations, deadline_seconds) of a request: its own where it set one
        within the limits, else the limit."""

        def lowered(value: float, limit: float) -> float:
            return min(value, limit) if value > 0 else limit

        return (
            int(lowered(asked.max_rows, self.max_rows)),
            int(lowered(asked.max_evaluations, self.max_evaluations)),
            float(lowered(asked.deadline_seconds, self.deadline_seconds)),
        )


@dataclass(frozen=True)
class ExplainSubject:
    """What a worker needs to explain one version: its verified ONNX bytes and its background."""

    model: str
    version: int
    artifact_sha256: str
    onnx: bytes
    features: tuple[str, ...]
    background: np.ndarray  # float32 [B, F]


@dataclass(frozen=True)
class ExplainQuery:
    """One Explain request, decoded."""

    model: str
    version: str  # "" for the champion
    rows: np.ndarray  # [N, F]
    output_class: int | None
    budget: pb.ExplainBudget
    request_id: str = ""


class SubjectSource(Protocol):
    """Where a served version's artifact and background come from (the registry)."""

    async def subject(self, model: LoadedModel) -> ExplainSubject: ...

    async def close(self) -> None: ...


def parse_background(
    model: str, version: int, raw: str | None, features: Sequence[str]
) -> tuple[tuple[str, ...], np.ndarray]:
    """The background rows of the `explain_background` tag and their feature names. `features` are
    the served version's (empty when unknown); the background's must be the same, in the same order."""
    if not raw:
        raise FailedPrecondition(
            f"{model} v{version} has no explanation background (registry tag {BACKGROUND_TAG!r}); "
            "versions trained since explanations were added carry one"
        )
    try:
        loaded = json.loads(raw)
        rows = np.asarray(loaded["rows"], dtype=np.float32)
        named = [str(name) for name in loaded.get("features") or []]
    except (ValueError, TypeError, KeyError) as exc:
        raise FailedPrecondition(
            f"{model} v{version}: tag {BACKGROUND_TAG!r} is not {{'features': [...], 'rows': [[...]]}} "
            f"({truncate(str(exc), 120)})"
        ) from None
    if rows.ndim != 2 or rows.shape[0] == 0 or not np.isfinite(rows).all():
        raise FailedPrecondition(
            f"{model} v{version}: the explanation background must be a non-empty table of finite "
            f"numbers; it has shape {list(rows.shape)}"
        )
    if named and len(named) != rows.shape[1]:
        raise FailedPrecondition(
            f"{model} v{version}: the explanation background names {len(named)} features but its "
            f"rows have {rows.shape[1]} values"
        )
    if features and named and list(features) != named:
        raise FailedPrecondition(
            f"{model} v{version}: the explanation background's features differ from the model's"
        )
    names = tuple(features) or tuple(named) or tuple(f"x{index}" for index in range(rows.shape[1]))
    if len(names) != rows.shape[1]:
        raise FailedPrecondition(
            f"{model} v{version}: the model has {len(names)} features but its explanation background "
            f"{rows.shape[1]}"
        )
    return names, rows


class RegistrySubjects:
    """Subjects from the registry: the version's tags and its artifact, downloaded and checked
    against the sha256 the registry recorded; the latest `CACHED_SUBJECTS` versions are kept."""

    def __init__(
        self, address: str, timeout_seconds: float = 60.0, security: ClientSecurity = PLAINTEXT
    ) -> None:
        self.address = address
        self.timeout_seconds = timeout_seconds
        self.security = security
        self._client: RegistryClient | None = None
        self._cache: OrderedDict[tuple[str, int], ExplainSubject] = OrderedDict()

    def _registry(self) -> RegistryClient:
        # Connected on first use: inside the event loop its channel belongs to.
        if self._client is None:
            self._client = RegistryClient.connect(self.address, self.security, timeout=self.timeout_seconds)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        self._client = None

    async def subject(self, model: LoadedModel) -> ExplainSubject:
        key = (model.name, model.version)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        try:
            version = await self._registry().get_version(model.name, model.version)
        except NotFound as exc:  # served but gone from the registry: nothing to explain it against
            raise FailedPrecondition(f"{model.name} v{model.version} is not in the registry: {exc}") from exc
        features, background = parse_background(
            model.name, model.version, version.tags.get(BACKGROUND_TAG), model.features
        )
        try:
            onnx = await self._registry().download_artifact(model.name, model.version)
        except (Unavailable, RemoteFailure):
            raise
        except CascadeError as exc:
            raise FailedPrecondition(f"the artifact of {model.name} v{model.version}: {exc}") from exc
        digest = hashlib.sha256(onnx).hexdigest()
        if digest != version.artifact_sha256:
            raise FailedPrecondition(
                f"the artifact of {model.name} v{model.version} has sha256 {digest}, but the registry "
                f"recorded {version.artifact_sha256 or 'none'}; refused"
            )
        subject = ExplainSubject(model.name, model.version, digest, onnx, features, background)
        self._cache[key] = subject
        while len(self._cache) > CACHED_SUBJECTS:
            self._cache.popitem(last=False)
        return subject


# -- the worker processes ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Job:
    subject: ExplainSubject
    background_rows: int
    rows: np.ndarray
    output_class: int | None
    max_rows: int
    max_evaluations: int
    deadline_seconds: float


@dataclass(frozen=True)
class _Refusal:
    """A CascadeError raised in a worker, carried back as data (its class may not unpickle)."""

    status: str  # a grpc.StatusCode name
    message: str


@dataclass(frozen=True)
class _Missing:
    """The worker has no explainer for the job's version and the job came without the artifact:
    send it again with the artifact (which travels only then, not with every request)."""


_explainers: OrderedDict[tuple[str, int, str, int], OnnxExplainer] = OrderedDict()


def _start_worker(nice_increment: int) -> None:
    """A pool worker: lower its CPU priority, and die with serving."""
    if nice_increment:
        with contextlib.suppress(OSError):
            os.nice(nice_increment)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _explainer(job: _Job) -> OnnxExplainer | None:
    """The cached explainer of the job's version, built if the job brought the artifact."""
    from cascade.explain import OnnxExplainer

    subject = job.subject
    key = (subject.model, subject.version, subject.artifact_sha256, job.background_rows)
    explainer = _explainers.get(key)
    if explainer is None:
        if not subject.onnx:
            return None
        explainer = OnnxExplainer(
            subject.onnx,
            subject.background,
            features=list(subject.features),
            max_background=job.background_rows,
        )
        _explainers[key] = explainer
        while len(_explainers) > WORKER_CACHED_EXPLAINERS:
            _explainers.popitem(last=False)
    _explainers.move_to_end(key)
    return explainer


def _explain_job(job: _Job) -> Explanation | _Refusal | _Missing:
    """Runs in a pool worker."""
    from cascade.explain import ExplainBudget

    try:
        budget = ExplainBudget(
            max_rows=job.max_rows, max_evaluations=job.max_evaluations, deadline_seconds=job.deadline_seconds
        )
        explainer = _explainer(job)
        if explainer is None:
            return _Missing()
        return explainer.explain(job.rows, output=job.output_class, budget=budget)
    except CascadeError as exc:
        return _Refusal(exc.status.name, truncate(str(exc)))
    except Exception as exc:  # a model the explainer cannot handle: say what, never INTERNAL
        log.exception("explaining %s v%d failed", job.subject.model, job.subject.version)
        return _Refusal(
            grpc.StatusCode.FAILED_PRECONDITION.name,
            truncate(
                f"{job.subject.model} v{job.subject.version} cannot be explained: {type(exc).__name__}: {exc}"
            ),
        )


_REFUSALS: dict[str, Callable[[str], CascadeError]] = {
    "INVALID_ARGUMENT": InvalidArgument,
    "NOT_FOUND": NotFound,
    "FAILED_PRECONDITION": FailedPrecondition,
    "DEADLINE_EXCEEDED": ExplainDeadline,
    "RESOURCE_EXHAUSTED": ExplainBusy,
}


class ExplainPool:
    """The processes explanations run in, started on the first request (a serving process that never
    explains starts none). A worker that dies (killed, out of memory) breaks the pool: that request is
    UNAVAILABLE and the next one gets a new pool."""

    def __init__(self, workers: int = 1, nice_increment: int = 10) -> None:
        self.workers = workers
        self.nice_increment = nice_increment
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(self.nice_increment,),
            )
        return self._executor

    def submit(self, job: _Job) -> Future[Explanation | _Refusal | _Missing]:
        try:
            return self._pool().submit(_explain_job, job)
        except BrokenProcessPool:
            self._discard()
            return self._pool().submit(_explain_job, job)

    def broken(self) -> None:
        """A worker died: the next request starts a new pool."""
        self._discard()

    def _discard(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    async def close(self) -> None:
        """Stop the workers at once (an explanation in progress is abandoned: its caller gets
        UNAVAILABLE), then reap them."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        # The executor offers no way to stop a running task; its processes are ours to end.
        for process in list(getattr(executor, "_processes", {}).values()):
            with contextlib.suppress(OSError):
                process.terminate()
        await asyncio.to_thread(executor.shutdown, True, cancel_futures=True)


# -- the transport-free core -------------------------------------------------------------------------
class ExplainCore:
    """Explain: resolve the served version, check the rows, hand them to the pool within a slot."""

    def __init__(
        self,
        repository: ModelRepository,
        subjects: SubjectSource,
        pool: ExplainPool,
        limits: ExplainLimits | None = None,
    ) -> None:
        self.repository = repository
        self.subjects = subjects
        self.pool = pool
        self.limits = limits or ExplainLimits()
        self.in_flight = 0

    async def close(self) -> None:
        await self.pool.close()
        await self.subjects.close()

    async def explain(self, query: ExplainQuery) -> tuple[LoadedModel, Explanation]:
        try:
            answer = await self._explain(query)
        except CascadeError as exc:
            # Only served names become labels: a caller's made-up names must not grow the metric.
            served = query.model if self.repository.champion(query.model) else ""
            EXPLANATIONS.labels(served, exc.status.name).inc()
            raise
        EXPLANATIONS.labels(answer[0].name, "OK").inc()
        return answer

    async def _explain(self, query: ExplainQuery) -> tuple[LoadedModel, Explanation]:
        model = self.repository.resolve(query.model, query.version)
        max_rows, max_evaluations, deadline = self.limits.budget(query.budget)
        _check_rows(model, query.rows, max_rows)
        if query.output_class is not None and query.output_class < 0:
            raise InvalidArgument(f"output_class must be a class index (0 or more); got {query.output_class}")
        if self.in_flight >= self.limits.max_concurrent:
            raise ExplainBusy(
                f"the explainer is busy ({self.in_flight} explanations in progress, at most "
                f"{self.limits.max_concurrent}); retry later"
            )
        self.in_flight += 1
        last: Future[Explanation | _Refusal | _Missing] | None = None
        try:
            started = time.monotonic()
            subject = await self.subjects.subject(model)
            # First without the artifact: a worker that explained this version keeps its explainer.
            for sent in (replace(subject, onnx=b""), subject):
                left = deadline - (time.monotonic() - started)
                job = _Job(
                    sent,
                    self.limits.background_rows,
                    query.rows,
                    query.output_class,
                    max_rows,
                    max_evaluations,
                    max(left, 0.001),
                )
                last = self.pool.submit(job)
                outcome = await self._outcome(last, left + DEADLINE_GRACE_SECONDS)
                if not isinstance(outcome, _Missing):
                    return model, outcome
            raise FailedPrecondition(
                f"{model.name} v{model.version}: the explainer did not take its artifact"
            )
        except ExplainDeadline:
            raise ExplainDeadline(
                f"explaining {len(query.rows)} row(s) of {model.name} v{model.version} took longer "
                f"than {deadline:g} s"
            ) from None
        finally:
            # The slot is free when the worker is, not when the caller stops waiting.
            if last is None or last.done():
                self.in_flight -= 1
            else:
                loop = asyncio.get_running_loop()
                last.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release))

    def _release(self) -> None:
        self.in_flight -= 1

    async def _outcome(
        self, future: Future[Explanation | _Refusal | _Missing], wait_seconds: float
    ) -> Explanation | _Missing:
        try:
            outcome = await asyncio.wait_for(asyncio.wrap_future(future), wait_seconds)
        except TimeoutError:
            raise ExplainDeadline("the explanation took too long") from None
        except BrokenProcessPool:
            self.pool.broken()
            raise Unavailable("the explainer's worker process died; retry") from None
        if isinstance(outcome, _Refusal):
            raise _REFUSALS.get(outcome.status, FailedPrecondition)(outcome.message)
        return outcome


def _check_rows(model: LoadedModel, rows: np.ndarray, max_rows: int) -> None:
    width = _width(model)
    if rows.ndim != 2 or (width and rows.shape[1] != width):
        raise InvalidArgument(
            f"{model.name} v{model.version} takes rows of shape [N, {width or 'F'}]; got {list(rows.shape)}"
        )
    if rows.shape[0] == 0:
        raise InvalidArgument("no rows to explain")
    if rows.shape[0] > max_rows:
        raise InvalidArgument(f"{rows.shape[0]} rows to explain; at most {max_rows} per request")
    finite = np.isfinite(rows)
    if not finite.all():
        row, column = (int(i) for i in np.argwhere(~finite)[0])
        name = model.features[column] if column < len(model.features) else f"column {column}"
        raise InvalidArgument(f"row {row}: {name} is {rows[row, column]}; every value must be finite")


def _width(model: LoadedModel) -> int:
    """The number of features the model takes (0 when its input does not say)."""
    if model.features:
        return len(model.features)
    shape = model.inputs[0].shape if model.inputs else ()
    return shape[-1] if len(shape) == 2 and shape[-1] > 0 else 0


# -- the gRPC adapter --------------------------------------------------------------------------------
_ROW_DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}


def rows_of(tensor: pb.Tensor) -> np.ndarray:
    """The [N, F] rows of a request's tensor (FP32 or FP64, typed or raw contents)."""
    dtype = _ROW_DTYPES.get(tensor.datatype)
    if dtype is None:
        raise InvalidArgument(f"input datatype must be FP32 or FP64; got {truncate(tensor.datatype, 40)!r}")
    shape = list(tensor.shape)
    if len(shape) != 2 or min(shape) < 0:
        raise InvalidArgument(f"input shape must be [rows, features]; got {truncate(str(shape), 80)}")
    count = math.prod(shape)
    if tensor.raw_contents:
        if len(tensor.raw_contents) != count * dtype.itemsize:
            raise InvalidArgument(
                f"raw_contents has {len(tensor.raw_contents)} bytes; shape {shape} of {tensor.datatype} "
                f"needs {count * dtype.itemsize}"
            )
        values: np.ndarray = np.frombuffer(tensor.raw_contents, dtype=dtype)
    else:
        typed = tensor.contents.fp32_contents if tensor.datatype == "FP32" else tensor.contents.fp64_contents
        if len(typed) != count:
            raise InvalidArgument(f"the input holds {len(typed)} values; shape {shape} needs {count}")
        values = np.asarray(typed, dtype=dtype)
    return values.reshape(shape)


def query_of_json(model: str, version: str, body: Mapping[str, Any]) -> ExplainQuery:
    """A REST request's body (`POST /v2/models/{name}[/versions/{v}]/explain`): one V2 tensor in
    "inputs" (`{"name", "shape": [rows, features], "datatype": "FP32" | "FP64", "data": [...]}`,
    data flat or nested, row-major) and optional "parameters": output_class, max_rows,
    max_evaluations, deadline_seconds; "id" is echoed."""
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidArgument(
            '"inputs" must hold one tensor: {"name": ..., "shape": [rows, features], "datatype": '
            '"FP32" or "FP64", "data": [...]}'
        )
    tensor = inputs[0]
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if not isinstance(datatype, str) or datatype not in _ROW_DTYPES:
        raise InvalidArgument(f"input datatype must be FP32 or FP64; got {truncate(repr(datatype), 40)}")
    if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
        raise InvalidArgument("input shape must be a list of integers, [rows, features]")
    try:
        values = np.asarray(tensor.get("data"), dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise InvalidArgument("input data must be numbers (a flat or nested list)") from None
    rows = rows_of(
        pb.Tensor(datatype=datatype, shape=shape, raw_contents=values.astype(_ROW_DTYPES[datatype]).tobytes())
    )
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidArgument('"parameters" must be a JSON object')

    def number(key: str, kind: type[int] | type[float]) -> Any:
        value = parameters.get(key)
        if value is None:
            return None
        numeric = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not numeric or (kind is int and value != int(value)):
            raise InvalidArgument(f"parameter {key} must be a{'n integer' if kind is int else ' number'}")
        return kind(value)

    request_id = body.get("id", "")
    return ExplainQuery(
        model=model,
        version=version,
        rows=rows,
        output_class=number("output_class", int),
        budget=pb.ExplainBudget(
            max_rows=number("max_rows", int) or 0,
            max_evaluations=number("max_evaluations", int) or 0,
            deadline_seconds=number("deadline_seconds", float) or 0.0,
        ),
        request_id=request_id if isinstance(request_id, str) else "",
    )


def _class_label(explanation: Explanation, row: int) -> str:
    """The label of the row's explained class ("" for a regressor): class_labels has one per row."""
    labels = explanation.class_labels
    return str(labels[row]) if labels is not None and row < len(labels) else ""


def response_of(query: ExplainQuery, model: LoadedModel, explanation: Explanation) -> pb.ExplainResponse:
    return pb.ExplainResponse(
        model_name=model.name,
        model_version=str(model.version),
        id=query.request_id,
        features=list(explanation.features),
        method=explanation.method,
        output_space=explanation.output_space,
        rows=[
            pb.RowAttribution(
                class_index=int(explanation.class_indices[row]),
                class_label=_class_label(explanation, row),
                base_value=float(explanation.base_values[row]),
                output=float(explanation.outputs[row]),
                attributions=[float(value) for value in explanation.attributions[row]],
            )
            for row in range(len(explanation.outputs))
        ],
        evaluations=int(explanation.evaluations),
        seconds=float(explanation.seconds),
    )


class ExplainerServicer(pb_grpc.ExplainerServicer):
    """cascade.explain.v1.Explainer over ExplainCore: protobuf in, protobuf out, nothing more."""

    def __init__(self, core: ExplainCore) -> None:
        self.core = core

    @grpc_errors
    async def Explain(self, request: pb.ExplainRequest, context: ServicerContext) -> pb.ExplainResponse:
        if not request.model_name:
            raise InvalidArgument("model_name is required")
        if not request.HasField("input"):
            raise InvalidArgument("input (the rows to explain) is required")
        query = ExplainQuery(
            model=request.model_name,
            version=request.model_version,
            rows=rows_of(request.input),
            output_class=request.output_class if request.HasField("output_class") else None,
            budget=request.budget,
            request_id=request.id,
        )
        model, explanation = await self.core.explain(query)
        return response_of(query, model, explanation)


def register(server: grpc.aio.Server, core: ExplainCore) -> None:
    pb_grpc.add_ExplainerServicer_to_server(ExplainerServicer(core), server)
