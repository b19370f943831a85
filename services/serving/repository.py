"""The models being served: loading, atomic hot swap, and lookup by name and version. No transport.

Each loaded version is an immutable `LoadedModel`, and each model's traffic an immutable `Route`
(cascade.services.serving.traffic): its champion, and the canary and shadow of a progressive
rollout. Promoting a version or changing the split is a single assignment of the model's route
(atomic in CPython), so a request that already picked its version finishes on it, and the next
request gets the new route. Every version is built and warmed up before the route that needs it is
swapped in; if that fails, the old route keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument as OrtInvalidArgument
from prometheus_client import Counter, Gauge, Histogram

from cascade.errors import (
    CascadeError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RemoteFailure,
    Unavailable,
)
from cascade.services.serving.readiness import StartupLoad
from cascade.services.serving.traffic import Route, Routed, RoutingKey, TrafficSplit

__all__ = [
    "OIP_DTYPES",
    "Array",
    "LoadFailure",
    "LoadedModel",
    "ModelRef",
    "ModelRejectedInput",
    "ModelRepository",
    "ModelSource",
    "TensorSpec",
    "oip_datatype",
]

log = logging.getLogger(__name__)

LOADED_VERSION = Gauge("cascade_serving_loaded_version", "Version of each model's champion.", ["model"])
SWAPS = Counter("cascade_serving_swaps_total", "Champion swaps, by model.", ["model"])
SWAP_SECONDS = Histogram(
    "cascade_serving_swap_seconds",
    "Time to build, warm up and swap in a model version.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

TRAFFIC_REVISION = Gauge(
    "cascade_serving_traffic_revision",
    "Revision of each model's traffic split this replica follows.",
    ["model"],
)
TRAFFIC_PERCENT = Gauge(
    "cascade_serving_traffic_percent",
    "Share of each model's requests (0..100) its canary answers (role canary) or its shadow also "
    "scores (role shadow) in this replica.",
    ["model", "role"],
)

FAILED_LOADS = Counter(
    "cascade_serving_failed_loads_total",
    "Versions refused at promotion (the old version kept serving), by model and reason.",
    ["model", "reason"],
)

Array = npt.NDArray[Any]

# ONNX tensor element types and the Open Inference Protocol datatype names for them.
_ONNX_TO_OIP = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
}
OIP_DTYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "FP16": np.dtype(np.float16),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "BOOL": np.dtype(np.bool_),
}
_NUMPY_TO_OIP = {dtype: name for name, dtype in OIP_DTYPES.items()}


def oip_datatype(dtype: np.dtype[Any]) -> str:
    """The Open Inference Protocol name of a numpy dtype, e.g. FP32 for float32."""
    try:
        return _NUMPY_TO_OIP[dtype.newbyteorder("=")]
    except KeyError:
        raise InvalidArgument(f"numpy dtype {dtype} has no Open Inference Protocol datatype") from None


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model, as the session declares it."""

    name: str
    datatype: str  # OIP name: FP32, INT64, ...
    shape: tuple[int, ...]  # -1 where the size is dynamic
    dtype: np.dtype[Any]


class ModelRejectedInput(InvalidArgument):
    """A request that passed serving's checks, refused by the model's session itself: a version
    that cannot take what its champion takes fails such requests, so they count against it."""


@dataclass(frozen=True)
class LoadedModel:
    """One version of one model, ready to answer. Never mutated, so it can be swapped atomically."""

    name: str
    version: int
    session: ort.InferenceSession
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Column names of the first input, from the registry's "features" tag; empty when unknown.
    features: tuple[str, ...] = ()

    def predict(self, feeds: Mapping[str, Array]) -> list[Array]:
        """Every output, in the model's order. Blocking: call it from a worker thread."""
        try:
            results: list[Array] = self.session.run(None, dict(feeds))
        except OrtInvalidArgument as exc:
            raise ModelRejectedInput(
                f"model {self.name} version {self.version} rejected the input: {exc}"
            ) from exc
        return results


@dataclass(frozen=True)
class ModelRef:
    """A version the registry vouches for: which artifact to fetch and the digest it must have."""

    model: str
    version: int
    artifact_sha256: str
    features: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadFailure:
    """A version that could not be served. `reason` is one of `LoadFailure.REASONS`."""

    REASONS = ("digest_mismatch", "download_refused", "invalid_model", "incompatible", "warmup_failed")

    model: str
    version: int
    reason: str
    detail: str
    serving_version: int | None  # what keeps serving


class _Refused(Exception):
    """A load step failed for `reason`."""

    def __init__(self, reason: str, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.reason = reason


OnLoaded = Callable[[LoadedModel], Awaitable[None]]
OnLoadFailed = Callable[[LoadFailure], Awaitable[None]]


class ModelSource(Protocol):
    """Where models come from (the registry). Raises `Unavailable` while it cannot be reached."""

    async def models_with_champion(self) -> list[str]: ...

    async def champion(self, model: str) -> ModelRef: ...

    async def version(self, model: str, version: int) -> ModelRef: ...

    async def traffic(self, model: str) -> TrafficSplit:
        """The model's split; champion version 0 when it is not known (the champion alias rules)."""
        ...

    async def artifact(self, ref: ModelRef) -> bytes:
        """The ONNX bytes of `ref`, already checked against its digest."""
        ...


class ModelRepository:
    """`on_loaded` runs after a version becomes the champion; `on_load_failed` after a version is
    refused. Both are awaited inside the model's lock, and their own failures are only logged.
    `startup` follows the initial sync (`sync_all_until_done`): while a model it names is loading,
    a request for it is UNAVAILABLE rather than NOT_FOUND (cascade.services.serving.readiness)."""

    def __init__(
        self,
        source: ModelSource,
        keep_versions: int = 2,
        on_loaded: OnLoaded | None = None,
        on_load_failed: OnLoadFailed | None = None,
        startup: StartupLoad | None = None,
    ) -> None:
        if keep_versions < 1:
            raise ValueError("keep_versions must be at least 1: the champion stays loaded")
        self._source = source
        self._keep_versions = keep_versions
        self._on_loaded = on_loaded
        self._on_load_failed = on_load_failed
        # The last refused version of each model, until a later version loads.
        self.failures: dict[str, LoadFailure] = {}
        # Per model, its route: the champion, and any canary and shadow. Replaced whole, never edited.
        self._routes: dict[str, Route] = {}
        # Per model, the versions kept loaded, oldest load first. Replaced whole, never edited in place.
        self._loaded: dict[str, dict[int, LoadedModel]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.startup = startup

    # -- lookups (called on every request: no awaits, no locks) ----------------------------------
    def models(self) -> list[str]:
        return sorted(self._routes)

    def champion(self, name: str) -> LoadedModel | None:
        route = self._routes.get(name)
        return None if route is None else route.champion

    def route(self, name: str) -> Route | None:
        return self._routes.get(name)

    def versions(self, name: str) -> list[int]:
        return sorted(self._loaded.get(name, {}))

    def routed(self, name: str, version: str = "", routing_key: RoutingKey = "") -> Routed:
        """Where a request goes: the version it names (bypassing the split), else the version the
        model's route picks for its routing key (a callable is only called when there is a canary)."""
        route = self._routes.get(name)
        if route is None or version:
            model = self.resolve(name, version)
            return Routed(model, route.role_of(model.version) if route else "champion", route, explicit=True)
        return route.pick(routing_key)

    def resolve(self, name: str, version: str = "") -> LoadedModel:
        """The champion of `name` for an empty version, else that loaded version."""
        route = self._routes.get(name)
        if route is None:
            raise self._missing(name, f"model {name!r} is not loaded; loaded models: {self.models()}")
        if not version:
            return route.champion
        loaded = self._loaded.get(name, {})
        model = loaded.get(int(version)) if version.isdecimal() else None
        if model is None:
            raise self._missing(
                name,
                f"model {name!r} has no loaded version {version!r}; loaded versions: {self.versions(name)}",
            )
        return model

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.resolve(name, version)
        except (NotFound, Unavailable):
            return False
        return True

    # -- changes ---------------------------------------------------------------------------------
    async def load(
        self, name: str, version: int, onnx_bytes: bytes, features: Sequence[str] = ()
    ) -> LoadedModel:
        """Build and warm up a version off the event loop, then make it the champion."""
        async with self._lock(name):
            return await self._load(name, version, onnx_bytes, tuple(features))

    async def sync_champion(self, name: str) -> bool:
        """Serve whatever the registry's champion of `name` is now; True if the champion changed.

        Idempotent, and it re-reads the alias instead of trusting an event, so repeated or
        out-of-order promotions are harmless. Raises `Unavailable` while the registry is
        unreachable; any other failure is logged and raised with the old version still serving.
        """
        async with self._lock(name):
            try:
                return await self._sync(name)
            except Unavailable:
                raise
            except CascadeError as exc:
                current = self.champion(name)
                log.error(
                    "champion of %s refused; %s: %s",
                    name,
                    f"version {current.version} keeps serving" if current else "nothing is served",
                    exc,
                )
                raise

    async def sync_traffic(self, name: str) -> bool:
        """Follow the registry's traffic split of `name` now; True if the route changed.

        Re-reads the split rather than trusting an event, and ignores a split older (a lower
        revision) than the one installed, so repeated or late events are harmless. Loads the
        canary and shadow versions first; one that cannot be served is refused (metric, event,
        `failures`) and raised as FailedPrecondition, the old route still serving.
        """
        async with self._lock(name):
            try:
                return await self._sync_traffic(name)
            except Unavailable:
                raise
            except CascadeError as exc:
                current = self._routes.get(name)
                log.error(
                    "traffic of %s refused; %s: %s",
                    name,
                    current.describe() if current else "nothing is served",
                    exc,
                )
                raise

    async def sync_all(self) -> None:
        """Sync every model that has a champion, and its traffic split. One broken model does not
        stop the others. Each model settled (served as the registry says, or a version refused) is
        reported to `startup`."""
        names = await self._source.models_with_champion()
        if self.startup is not None:
            self.startup.listed(names)
        for name in names:
            try:
                await self.sync_champion(name)
                await self.sync_traffic(name)
            except (Unavailable, RemoteFailure):
                raise  # the registry may answer next time: sync_all_until_done tries again
            except CascadeError as exc:
                # Logged by sync_champion or sync_traffic; the old version (if any) keeps serving.
                if self.startup is not None:
                    self.startup.settled(name, refused=str(exc))
                continue
            if self.startup is not None:
                self.startup.settled(name)

    async def sync_all_until_done(self, first_delay: float = 0.5, max_delay: float = 30.0) -> None:
        """`sync_all`, retried with exponential backoff for as long as the registry is unreachable or
        failing inside (RemoteFailure).

        Runs as a background task, so it never raises: a permanent failure is logged, and the
        champions then load on their next promotion. `startup` hears of each retry, and of the end."""
        try:
            await self._sync_all_retrying(first_delay, max_delay)
        finally:
            if self.startup is not None:
                self.startup.finished()

    async def _sync_all_retrying(self, first_delay: float, max_delay: float) -> None:
        delay = first_delay
        while True:
            try:
                await self.sync_all()
                return
            except (Unavailable, RemoteFailure) as exc:  # down, or failing inside: perhaps not for long
                log.warning("cannot load champions yet (%s); retrying in %.1f s", exc, delay)
                self._retrying(str(exc))
            except CascadeError as exc:
                log.error("cannot load champions: %s; they will load on their next promotion", exc)
                return
            except Exception as exc:  # unexpected, so maybe transient: keep trying rather than serve nothing
                log.exception("loading champions failed; retrying in %.1f s", delay)
                self._retrying(repr(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)

    # -- internals -------------------------------------------------------------------------------
    def _missing(self, name: str, message: str) -> CascadeError:
        """NOT_FOUND with `message`, unless `name` is still loading at start-up (UNAVAILABLE)."""
        loading = None if self.startup is None else self.startup.missing(name)
        return NotFound(message) if loading is None else loading

    def _retrying(self, error: str) -> None:
        if self.startup is not None:
            self.startup.retrying(error)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _sync(self, name: str) -> bool:
        ref = await self._source.champion(name)
        current = self.champion(name)
        if current is not None and current.version == ref.version:
            return False
        kept = self._loaded.get(name, {}).get(ref.version)
        if kept is not None:  # e.g. a rollback to a version still loaded, or the canary: swap, no download
            self._install(kept)
            log.info("model %s: champion is now version %d (already loaded)", name, ref.version)
            await self._notify_loaded(kept)
            return True
        onnx_bytes = await self._download(ref)
        await self._load(name, ref.version, onnx_bytes, ref.features)
        return True

    async def _download(self, ref: ModelRef) -> bytes:
        try:
            return await self._source.artifact(ref)
        except FailedPrecondition as exc:  # corrupt in storage or transit, or refused by the registry
            reason = "digest_mismatch" if "sha256" in str(exc) else "download_refused"
            await self._refuse(ref.model, ref.version, reason, exc)
            raise

    async def _sync_traffic(self, name: str) -> bool:
        split = await self._source.traffic(name)
        route = self._routes.get(name)
        if route is not None and split.revision < route.revision:
            log.info(
                "model %s: traffic revision %d is older than the installed %d; ignored",
                name,
                split.revision,
                route.revision,
            )
            return False
        if split.champion_version and (route is None or route.champion.version != split.champion_version):
            await self._sync(name)  # the champion moved too: follow its alias, as a promotion does
            route = self._routes.get(name)
        if route is None:
            return False  # no champion served: a split has nothing to route between
        canary = await self._challenger(name, split.canary_version, split.canary_percent)
        shadow = await self._challenger(name, split.shadow_version, split.shadow_percent)
        new = Route(
            route.champion,
            canary,
            split.canary_percent if canary else 0.0,
            shadow,
            split.shadow_percent if shadow else 0.0,
            split.revision,
        ).with_champion(route.champion)
        if new.same_split(route):
            return False
        self._put(name, new, [model for model in (new.canary, new.shadow) if model is not None])
        failure = self.failures.get(name)
        if failure is not None and failure.version in new.pinned():
            self.failures.pop(name, None)
        TRAFFIC_REVISION.labels(name).set(new.revision)
        TRAFFIC_PERCENT.labels(name, "canary").set(new.canary_percent)
        TRAFFIC_PERCENT.labels(name, "shadow").set(new.shadow_percent)
        log.info("model %s: traffic is now %s", name, new.describe())
        return True

    async def _challenger(self, name: str, version: int, percent: float) -> LoadedModel | None:
        """The loaded canary or shadow `version` (loaded now if need be); None for no share."""
        if not version or percent <= 0:
            return None
        kept = self._loaded.get(name, {}).get(version)
        if kept is not None:
            return kept
        try:
            ref = await self._source.version(name, version)
        except NotFound as exc:  # gone since the split named it: refused like any unservable version
            error = FailedPrecondition(f"model {name} version {version} cannot be served: {exc}")
            await self._refuse(name, version, "download_refused", error)
            raise error from exc
        onnx_bytes = await self._download(ref)
        started = time.perf_counter()
        try:
            model = await asyncio.to_thread(_build, name, version, onnx_bytes, ref.features)
        except _Refused as exc:
            error = FailedPrecondition(f"model {name} version {version} cannot be served: {exc}")
            await self._refuse(name, version, exc.reason, error)
            raise error from exc
        log.info(
            "model %s: version %d loaded beside the champion in %.3f s",
            name,
            version,
            time.perf_counter() - started,
        )
        return model

    async def _load(
        self, name: str, version: int, onnx_bytes: bytes, features: tuple[str, ...]
    ) -> LoadedModel:
        started = time.perf_counter()
        try:
            model = await asyncio.to_thread(_build, name, version, onnx_bytes, features)
        except _Refused as exc:
            error = FailedPrecondition(f"model {name} version {version} cannot be served: {exc}")
            await self._refuse(name, version, exc.reason, error)
            raise error from exc
        previous = self.champion(name)
        self._install(model)
        seconds = time.perf_counter() - started
        SWAP_SECONDS.observe(seconds)
        log.info(
            "model %s: champion is now version %d (was %s), loaded in %.3f s",
            name,
            version,
            previous.version if previous else "none",
            seconds,
        )
        await self._notify_loaded(model)
        return model

    async def _refuse(self, name: str, version: int, reason: str, exc: BaseException) -> None:
        current = self.champion(name)
        failure = LoadFailure(name, version, reason, str(exc), current.version if current else None)
        self.failures[name] = failure
        FAILED_LOADS.labels(name, reason).inc()
        if self._on_load_failed is not None:
            try:
                await self._on_load_failed(failure)
            except Exception:
                log.exception("reporting the refused version %d of %s failed", version, name)

    async def _notify_loaded(self, model: LoadedModel) -> None:
        if self._on_loaded is not None:
            try:
                await self._on_loaded(model)
            except Exception:
                log.exception("on_loaded of %s version %d failed", model.name, model.version)

    def _install(self, model: LoadedModel) -> None:
        """Keep `model` loaded and make it the champion of the model's route."""
        current = self._routes.get(model.name)
        self._put(model.name, Route(model) if current is None else current.with_champion(model), [model])
        self.failures.pop(model.name, None)  # a refused version before this one no longer matters
        SWAPS.labels(model.name).inc()
        LOADED_VERSION.labels(model.name).set(model.version)

    def _put(self, name: str, route: Route, loaded: Sequence[LoadedModel]) -> None:
        """Keep `loaded` loaded, evict the oldest versions beyond `keep_versions` that `route` does
        not need, and install `route`: each a single assignment."""
        fresh = {model.version for model in loaded}
        versions = {v: m for v, m in self._loaded.get(name, {}).items() if v not in fresh}
        versions.update((model.version, model) for model in loaded)  # most recent last
        pinned = route.pinned()
        limit = max(self._keep_versions, len(pinned))
        for version in list(versions):
            if len(versions) <= limit:
                break
            if version not in pinned:
                del versions[version]  # the oldest first
        self._loaded[name] = versions
        self._routes[name] = route


def _build(name: str, version: int, onnx_bytes: bytes, features: tuple[str, ...]) -> LoadedModel:
    """Open, check and warm up one version; `_Refused` says which step failed. Blocking."""
    try:
        session = _open_session(onnx_bytes)
    except Exception as exc:
        raise _Refused("invalid_model", exc) from exc
    try:
        model = LoadedModel(name, version, session, *_tensor_specs(session), features=features)
    except Exception as exc:
        raise _Refused("incompatible", exc) from exc
    try:
        _warm_up(model)
    except Exception as exc:
        raise _Refused("warmup_failed", exc) from exc
    return model


def _open_session(onnx_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # One thread per request: requests run in parallel on the worker pool instead.
    options.intra_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def _tensor_specs(session: ort.InferenceSession) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    inputs = tuple(_tensor_spec(node, "input") for node in session.get_inputs())
    outputs = tuple(_tensor_spec(node, "output") for node in session.get_outputs())
    if not inputs or not outputs:
        raise ValueError("a served model needs at least one input and one output")
    return inputs, outputs


def _tensor_spec(node: Any, kind: str) -> TensorSpec:
    datatype = _ONNX_TO_OIP.get(node.type)
    if datatype is None:
        hint = "; export it with zipmap disabled" if node.type.startswith("seq(") else ""
        raise ValueError(f"{kind} {node.name!r} has type {node.type}, which serving does not support{hint}")
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in node.shape)
    return TensorSpec(node.name, datatype, shape, OIP_DTYPES[datatype])


def _warm_up(model: LoadedModel) -> None:
    """One dummy row through the model, so its first real request is not the slow one."""
    feeds = {
        spec.name: np.zeros([1 if dim < 0 else dim for dim in spec.shape], spec.dtype)
        for spec in model.inputs
    }
    model.predict(feeds)
