"""Cascade's Python SDK: one object for the six services, as MlflowClient plus tritonclient are one
for a user of those. `AsyncClient` for asyncio code; `Client`, the same methods blocking.

    from cascade import Client

    with Client() as cascade:                      # the local stack (`cascade up`)
        upload = cascade.upload(frame, "cancer")
        version = cascade.follow(upload.dataset_version, "cancer")
        labels = cascade.predict("cancer", frame)["label"]
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import numpy as np
import pandas as pd

from cascade.client.calls import RemoteService
from cascade.client.channels import ClientSecurity, open_channel
from cascade.client.explain import ExplainClient, Explained, feature_rows
from cascade.client.ingest import IngestClient
from cascade.client.monitor import MonitorClient
from cascade.client.records import (
    Approval,
    ApprovalStatus,
    DriftReport,
    Lineage,
    Model,
    ModelVersion,
    RolloutPlan,
    RolloutStep,
    RolloutThresholds,
    Traffic,
    UploadResult,
    VersionStatus,
)
from cascade.client.registry import RegistryClient
from cascade.client.serving import Prediction, ServingClient
from cascade.client.trainer import TrainerClient
from cascade.errors import FailedPrecondition, NotFound, truncate

__all__ = ["LOCAL_PORTS", "AsyncClient", "CascadeTimeout", "Client"]

T = TypeVar("T")

# The gRPC ports of a local stack started by `cascade up` (cascade.stack.launcher.DEFAULT_PORTS; a
# test keeps the two equal, since the SDK installs without the launcher).
LOCAL_PORTS: Mapping[str, int] = {
    "ingest": 50051,
    "trainer": 50052,
    "validator": 50053,
    "registry": 50054,
    "monitor": 50055,
    "serving": 8001,
}


class CascadeTimeout(TimeoutError):
    """A cascade did not reach the state waited for in time."""


class AsyncClient:
    """The services a user calls. `addresses` overrides `host:LOCAL_PORTS[name]` per service;
    `security` (token, TLS) defaults to the environment's (ClientSecurity.from_env); `timeout`
    bounds each call."""

    def __init__(
        self,
        addresses: Mapping[str, str] | None = None,
        *,
        host: str = "127.0.0.1",
        security: ClientSecurity | None = None,
        timeout: float | None = 60.0,
    ) -> None:
        chosen = {name: f"{host}:{port}" for name, port in LOCAL_PORTS.items()} | dict(addresses or {})
        security = security if security is not None else ClientSecurity.from_env()
        self.addresses = chosen

        def service(name: str) -> RemoteService:
            return RemoteService(name, open_channel(chosen[name], security), chosen[name])

        self.ingest = IngestClient(service("ingest"), timeout=timeout)
        self.registry = RegistryClient(service("registry"), timeout=timeout)
        self.trainer = TrainerClient(service("trainer"), timeout=timeout)
        self.monitor = MonitorClient(service("monitor"), timeout=timeout)
        self.serving = ServingClient(chosen["serving"], security)
        # Serving's Explainer, on serving's channel (closed with it).
        self.explainer = ExplainClient(self.serving.service, timeout=timeout)

    async def close(self) -> None:
        for client in (self.ingest, self.registry, self.trainer, self.monitor, self.serving):
            await client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    # -- data ------------------------------------------------------------------------------------
    async def upload(
        self, data: pd.DataFrame | bytes | Path, dataset: str, *, target: str = "target"
    ) -> UploadResult:
        """Upload one batch (a DataFrame goes as CSV, without its index); training, validation
        and promotion follow on their own: `follow` waits for them."""
        if isinstance(data, pd.DataFrame):
            frame = data  # serialising a large frame is CPU work: off the event loop
            data = await asyncio.to_thread(lambda: frame.to_csv(index=False).encode())
        return await self.ingest.upload_batch(data, dataset, target=target)

    async def follow(
        self,
        dataset_version: str,
        model: str,
        *,
        wait_seconds: float = 300.0,
        poll_seconds: float = 1.0,
        served: bool = True,
    ) -> ModelVersion:
        """Wait for the cascade a dataset version started: a version of `model` trained on it and
        judged by the validator; when it passed and `served`, until it is champion and serving
        answers with it. FailedPrecondition when it failed validation; CascadeTimeout when the
        cascade does not get there in `wait_seconds`."""
        deadline = time.monotonic() + wait_seconds
        waiting_for = f"a version of {model} trained on {dataset_version}"
        while True:
            version = await self._judged_version(model, dataset_version)
            if version is not None:
                if version.status is VersionStatus.failed:
                    # The report quotes every gate; the message keeps its start (the whole is on the version).
                    raise FailedPrecondition(
                        truncate(
                            f"{model} v{version.version} (trained on {dataset_version}) failed validation: "
                            f"{version.validation_report_json}",
                            2000,
                        )
                    )
                if not served:
                    return version
                waiting_for = f"{model} v{version.version} to be champion and served"
                if await self._serving(model, version.version):
                    return await self.registry.get_version(model, version.version)
            if time.monotonic() >= deadline:
                raise CascadeTimeout(f"timed out after {wait_seconds:g} s waiting for {waiting_for}")
            await asyncio.sleep(poll_seconds)

    async def _judged_version(self, model: str, dataset_version: str) -> ModelVersion | None:
        try:
            versions = await self.registry.list_versions(model, dataset_version=dataset_version)
        except NotFound:  # the model appears with its first version
            return None
        judged = [v for v in versions if v.status in (VersionStatus.ready, VersionStatus.failed)]
        return judged[-1] if judged else None

    async def _serving(self, model: str, version: int) -> bool:
        champion = await self.registry.get_version(model, alias="champion")
        return champion.version == version and await self.serving.model_ready(model, str(version))

    # -- models and versions ---------------------------------------------------------------------
    async def list_models(self) -> list[Model]:
        return await self.registry.list_models()

    async def get_model(self, name: str) -> Model:
        return await self.registry.get_model(name)

    async def search_versions(
        self, model: str = "", *, tags: Mapping[str, str] | None = None, dataset_version: str = ""
    ) -> list[ModelVersion]:
        """Versions (of one model, or of all), newest first, carrying every tag given."""
        return await self.registry.search_versions(model, tags=tags, dataset_version=dataset_version)

    async def get_version(self, model: str, version: int | None = None, *, alias: str = "") -> ModelVersion:
        """A version by number, or by alias (the champion when neither is given)."""
        if version is not None:
            return await self.registry.get_version(model, version)
        return await self.registry.get_version(model, alias=alias or "champion")

    async def promote(
        self, model: str, version: int, *, alias: str = "champion", reason: str = ""
    ) -> ModelVersion:
        return await self.registry.set_alias(model, alias, version, reason=reason)

    async def rollback(self, model: str, *, reason: str = "") -> ModelVersion:
        """Champion back to the version it pointed at before its latest move."""
        return await self.registry.rollback(model, reason=reason)

    async def approvals(self, model: str = "", *, status: ApprovalStatus | None = None) -> list[Approval]:
        """Versions awaiting (or past) approval under the manual policy, newest first."""
        return await self.registry.list_approvals(model, status)

    async def approve(self, model: str, version: int = 0, *, reason: str) -> Approval:
        """Approve the version awaiting approval (0: the pending one): it becomes champion."""
        return await self.registry.approve_version(model, version, reason=reason)

    async def reject(self, model: str, version: int = 0, *, reason: str) -> Approval:
        """Reject the version awaiting approval (0: the pending one); the champion stays."""
        return await self.registry.reject_version(model, version, reason=reason)

    # -- progressive delivery --------------------------------------------------------------------
    async def traffic(self, model: str) -> Traffic:
        """Which versions take the model's requests (champion, canary, shadow) and its latest rollout."""
        return await self.registry.get_traffic(model)

    async def set_traffic(
        self,
        model: str,
        *,
        canary: tuple[int, float] = (0, 0.0),
        shadow: tuple[int, float] = (0, 0.0),
        reason: str = "",
    ) -> Traffic:
        """Split by hand: `canary` (version, percent) answers that share of requests, `shadow`
        (version, percent) scores that share beside the champion; (0, 0) for none."""
        return await self.registry.set_traffic(
            model,
            canary_version=canary[0],
            canary_percent=canary[1],
            shadow_version=shadow[0],
            shadow_percent=shadow[1],
            reason=reason,
        )

    async def rollout_plan(self, model: str) -> RolloutPlan:
        """The model's rollout plan, or the registry's default."""
        return await self.registry.get_rollout_plan(model)

    async def set_rollout_plan(
        self, model: str, steps: list[RolloutStep], thresholds: RolloutThresholds | None = None
    ) -> RolloutPlan:
        return await self.registry.set_rollout_plan(model, steps, thresholds)

    async def start_rollout(self, model: str, version: int, *, reason: str = "") -> Traffic:
        """Roll a version that passed validation out through the model's plan; the monitor advances
        it on live traffic (the last step makes it champion) or rolls it back."""
        return await self.registry.start_rollout(model, version, reason=reason)

    async def advance_rollout(self, model: str, version: int, from_step: int, *, reason: str = "") -> Traffic:
        """Move the running rollout on from `from_step` by hand (FailedPrecondition if it moved)."""
        return await self.registry.advance_rollout(model, version, from_step, reason=reason)

    async def abort_rollout(self, model: str, *, reason: str) -> Traffic:
        """Roll the running rollout back: all traffic to the champion at once; `reason` is its cause."""
        return await self.registry.abort_rollout(model, reason=reason)

    async def lineage(self, model: str, version: int) -> Lineage:
        return await self.registry.lineage(model, version)

    async def drift_report(self, model: str) -> DriftReport:
        return await self.monitor.drift_report(model)

    # -- predictions -----------------------------------------------------------------------------
    async def predict(self, model: str, data: pd.DataFrame | np.ndarray, *, version: str = "") -> Prediction:
        """The served model's answer for each row: DataFrame columns are matched to its features
        by name; an array is its input as it is."""
        return await self.serving.predict(model, data, version=version)

    async def explain(
        self,
        model: str,
        data: pd.DataFrame | Mapping[str, float] | np.ndarray,
        *,
        version: str = "",
        output_class: int | None = None,
        max_evaluations: int = 0,
        deadline_seconds: float = 0.0,
    ) -> Explained:
        """Why the served model answers as it does for each row: each feature's attribution to the
        output (the predicted class's, or `output_class`'s), with base value + attributions =
        output. A DataFrame's columns (or a dict's keys, one row) are matched to its features by
        name; an array is its input as it is."""
        if isinstance(data, np.ndarray):
            rows = data
        else:
            served = await self.serving.model_metadata(model, version)
            rows = feature_rows(model, served.features, data)
        return await self.explainer.explain(
            model,
            rows,
            version=version,
            output_class=output_class,
            max_evaluations=max_evaluations,
            deadline_seconds=deadline_seconds,
        )


class Client:
    """`AsyncClient`'s methods, blocking: they run on a private event loop in a background thread,
    so the client works the same from plain scripts and from inside another event loop (Jupyter)."""

    def __init__(
        self,
        addresses: Mapping[str, str] | None = None,
        *,
        host: str = "127.0.0.1",
        security: ClientSecurity | None = None,
        timeout: float | None = 60.0,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cascade-client", daemon=True)
        self._thread.start()

        async def build() -> AsyncClient:  # grpc.aio channels belong to the loop they are made on
            return AsyncClient(addresses, host=host, security=security, timeout=timeout)

        self._client = self._run(build())

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    @property
    def addresses(self) -> Mapping[str, str]:
        return self._client.addresses

    def call(self, calls: Callable[[AsyncClient], Awaitable[T]]) -> T:
        """Any of the typed clients' calls, blocking: `calls` gets the AsyncClient and runs on
        this client's event loop, e.g. `cascade.call(lambda c: c.registry.alias_history("m"))`."""

        async def run() -> T:
            return await calls(self._client)

        return self._run(run())

    def upload(
        self, data: pd.DataFrame | bytes | Path, dataset: str, *, target: str = "target"
    ) -> UploadResult:
        return self._run(self._client.upload(data, dataset, target=target))

    def follow(
        self,
        dataset_version: str,
        model: str,
        *,
        wait_seconds: float = 300.0,
        poll_seconds: float = 1.0,
        served: bool = True,
    ) -> ModelVersion:
        return self._run(
            self._client.follow(
                dataset_version, model, wait_seconds=wait_seconds, poll_seconds=poll_seconds, served=served
            )
        )

    def list_models(self) -> list[Model]:
        return self._run(self._client.list_models())

    def get_model(self, name: str) -> Model:
        return self._run(self._client.get_model(name))

    def search_versions(
        self, model: str = "", *, tags: Mapping[str, str] | None = None, dataset_version: str = ""
    ) -> list[ModelVersion]:
        return self._run(self._client.search_versions(model, tags=tags, dataset_version=dataset_version))

    def get_version(self, model: str, version: int | None = None, *, alias: str = "") -> ModelVersion:
        return self._run(self._client.get_version(model, version, alias=alias))

    def promote(self, model: str, version: int, *, alias: str = "champion", reason: str = "") -> ModelVersion:
        return self._run(self._client.promote(model, version, alias=alias, reason=reason))

    def rollback(self, model: str, *, reason: str = "") -> ModelVersion:
        return self._run(self._client.rollback(model, reason=reason))

    def approvals(self, model: str = "", *, status: ApprovalStatus | None = None) -> list[Approval]:
        return self._run(self._client.approvals(model, status=status))

    def approve(self, model: str, version: int = 0, *, reason: str) -> Approval:
        return self._run(self._client.approve(model, version, reason=reason))

    def reject(self, model: str, version: int = 0, *, reason: str) -> Approval:
        return self._run(self._client.reject(model, version, reason=reason))

    def traffic(self, model: str) -> Traffic:
        return self._run(self._client.traffic(model))

    def set_traffic(
        self,
        model: str,
        *,
        canary: tuple[int, float] = (0, 0.0),
        shadow: tuple[int, float] = (0, 0.0),
        reason: str = "",
    ) -> Traffic:
        return self._run(self._client.set_traffic(model, canary=canary, shadow=shadow, reason=reason))

    def rollout_plan(self, model: str) -> RolloutPlan:
        return self._run(self._client.rollout_plan(model))

    def set_rollout_plan(
        self, model: str, steps: list[RolloutStep], thresholds: RolloutThresholds | None = None
    ) -> RolloutPlan:
        return self._run(self._client.set_rollout_plan(model, steps, thresholds))

    def start_rollout(self, model: str, version: int, *, reason: str = "") -> Traffic:
        return self._run(self._client.start_rollout(model, version, reason=reason))

    def advance_rollout(self, model: str, version: int, from_step: int, *, reason: str = "") -> Traffic:
        return self._run(self._client.advance_rollout(model, version, from_step, reason=reason))

    def abort_rollout(self, model: str, *, reason: str) -> Traffic:
        return self._run(self._client.abort_rollout(model, reason=reason))

    def lineage(self, model: str, version: int) -> Lineage:
        return self._run(self._client.lineage(model, version))

    def drift_report(self, model: str) -> DriftReport:
        return self._run(self._client.drift_report(model))

    def predict(self, model: str, data: pd.DataFrame | np.ndarray, *, version: str = "") -> Prediction:
        return self._run(self._client.predict(model, data, version=version))

    def explain(
        self,
        model: str,
        data: pd.DataFrame | Mapping[str, float] | np.ndarray,
        *,
        version: str = "",
        output_class: int | None = None,
        max_evaluations: int = 0,
        deadline_seconds: float = 0.0,
    ) -> Explained:
        return self._run(
            self._client.explain(
                model,
                data,
                version=version,
                output_class=output_class,
                max_evaluations=max_evaluations,
                deadline_seconds=deadline_seconds,
            )
        )
