"""Fetches a champion's reference data through the clients of the registry and ingest: the registry
says which dataset version the model version was trained on; ingest describes that version and
streams it as Parquet, verified against its size and sha256 (cascade.client.downloads).

Failures say what retrying would do (cascade.client.calls): an unreachable or overloaded dependency
is `Unavailable` (the event is redelivered); data that will never be right (no such version, a
corrupt file) is permanent.
"""

from __future__ import annotations

import asyncio
import contextlib
import io

import numpy as np
import pandas as pd

from cascade.client.channels import PLAINTEXT, ClientSecurity
from cascade.client.ingest import IngestClient
from cascade.client.registry import RegistryClient
from cascade.errors import FailedPrecondition
from cascade.services.monitor.attribution import background_of
from cascade.services.monitor.core import Matrix, Reference, Unmonitored
from cascade.services.monitor.store import ReferenceInfo

__all__ = ["GrpcReferenceSource"]


class GrpcReferenceSource:
    """A `ReferenceSource` backed by the registry and ingest clients. Their channels live between
    `open()` and `close()`, inside the service's event loop."""

    def __init__(
        self,
        registry_address: str,
        ingest_address: str,
        timeout_seconds: float,
        security: ClientSecurity = PLAINTEXT,
    ) -> None:
        self.registry_address = registry_address
        self.security = security
        self.ingest_address = ingest_address
        self.timeout_seconds = timeout_seconds
        self._registry: RegistryClient | None = None
        self._ingest: IngestClient | None = None

    async def open(self) -> None:
        timeout = self.timeout_seconds
        self._registry = RegistryClient.connect(self.registry_address, self.security, timeout=timeout)
        self._ingest = IngestClient.connect(self.ingest_address, self.security, timeout=timeout)

    async def close(self) -> None:
        for client in (self._registry, self._ingest):
            if client is not None:
                await client.close()
        self._registry = self._ingest = None

    async def fetch(self, model: str, model_version: int) -> Reference:
        if self._registry is None or self._ingest is None:
            raise RuntimeError("GrpcReferenceSource.open() was not called")
        version = await self._registry.get_version(model, model_version)
        if not version.dataset:
            raise Unmonitored(f"{model} v{model_version} was imported without a reference dataset")
        dataset = await self._ingest.get_dataset_version(version.dataset, version.dataset_version)
        features = list(dataset.features)
        data = await self._ingest.download_dataset_file(dataset.dataset, dataset.version)
        name = f"{dataset.dataset}@{dataset.version}"
        rows, target = await asyncio.to_thread(_feature_rows, data, features, name, dataset.target)
        info = ReferenceInfo(
            model, model_version, dataset.dataset, dataset.version, tuple(features), len(rows)
        )
        return Reference(
            info,
            rows,
            target=target,
            task=version.tags.get("task", "") or dataset.task,
            champion_metrics=dict(version.run.metrics),
            background=background_of(dict(version.tags), features),
        )


def _feature_rows(
    data: bytes, features: list[str], name: str, target: str = ""
) -> tuple[Matrix, Matrix | None]:
    """The complete rows of the feature columns, in `features` order, and the target column of
    those rows when the dataset has one (the reference of prediction drift)."""
    if not features:
        raise FailedPrecondition(f"dataset {name} has no features")
    try:
        frame = pd.read_parquet(io.BytesIO(data))
        rows = frame[features].to_numpy(dtype=np.float64)
    except Exception as exc:  # pyarrow raises several unrelated types for bad files or columns
        raise FailedPrecondition(f"dataset {name} is not Parquet with columns {features}: {exc}") from exc
    complete_rows = np.isfinite(rows).all(axis=1)
    complete: Matrix = rows[complete_rows]
    if not len(complete):
        raise FailedPrecondition(f"dataset {name} has no complete rows to compare with")
    labels: Matrix | None = None
    if target and target in frame.columns:
        with contextlib.suppress(ValueError, TypeError):  # a non-numeric target: no prediction drift
            values = frame[target].to_numpy(dtype=np.float64)[complete_rows]
            labels = values if np.isfinite(values).all() else None
    return complete, labels
