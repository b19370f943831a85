"""Support for the traffic-split tests: an in-memory model source with a split, a registry fake that
answers GetTraffic too, and a challenger that loads but cannot score the champion's inputs.

Like support.py, nothing here may import `cascade.stubs.inference` (tritonclient shares the process).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression

from cascade.errors import NotFound
from cascade.services.serving.repository import ModelRef
from cascade.services.serving.traffic import TrafficSplit
from cascade.stubs.cascade.registry.v1 import registry_pb2 as pb
from cascade.stubs.cascade.registry.v1 import registry_pb2_grpc as pb_grpc

from .support import MODEL, Dataset, FakeRegistry, RunningRegistry, TrainedModel


class SplitSource:
    """An in-memory `ModelSource` whose model has a champion and a traffic split."""

    def __init__(self, artifacts: dict[int, bytes], champion: int = 1) -> None:
        self.artifacts = artifacts
        self.split = TrafficSplit(MODEL, champion_version=champion, revision=1)
        self.downloads: list[int] = []

    def set_split(self, **changes: Any) -> TrafficSplit:
        """A new split, one revision up (unless `revision` is given)."""
        fields = {**self.split.__dict__, "revision": self.split.revision + 1, **changes}
        self.split = TrafficSplit(**fields)
        return self.split

    def _ref(self, version: int) -> ModelRef:
        if version not in self.artifacts:
            raise NotFound(f"no version {version} of {MODEL}")
        return ModelRef(MODEL, version, hashlib.sha256(self.artifacts[version]).hexdigest())

    async def models_with_champion(self) -> list[str]:
        return [MODEL]

    async def champion(self, model: str) -> ModelRef:
        return self._ref(self.split.champion_version)

    async def version(self, model: str, version: int) -> ModelRef:
        return self._ref(version)

    async def traffic(self, model: str) -> TrafficSplit:
        return self.split

    async def artifact(self, ref: ModelRef) -> bytes:
        self.downloads.append(ref.version)
        return self.artifacts[ref.version]


def narrow_model(dataset: Dataset) -> bytes:
    """A valid classifier of the first 29 features: it loads and warms up on its own input shape,
    then fails on every request the 30-feature champion answers (a broken challenger)."""
    rows = dataset.rows[:100, :29] / dataset.rows[:100, :29].max(axis=0)  # scaled: fits at once
    labels = (rows[:, 0] > np.median(rows[:, 0])).astype(int)
    estimator = LogisticRegression(max_iter=1000).fit(rows, labels)
    onnx = convert_sklearn(
        estimator,
        initial_types=[("input", FloatTensorType([None, 29]))],
        options={id(estimator): {"zipmap": False}},
    )
    return bytes(onnx.SerializeToString())


class TrafficRegistry(FakeRegistry):
    """The fake registry with a traffic split per model (GetTraffic), as the real one keeps it."""

    def __init__(self) -> None:
        super().__init__()
        self.traffic: dict[str, pb.Traffic] = {}

    def set_traffic(
        self,
        model: str,
        canary: int = 0,
        canary_percent: float = 0.0,
        shadow: int = 0,
        shadow_percent: float = 0.0,
    ) -> int:
        """Change the split, one revision up; the new revision."""
        revision = self.traffic[model].revision + 1 if model in self.traffic else 1
        self.traffic[model] = pb.Traffic(
            model=model,
            champion_version=self.aliases[model].get("champion", 0),
            canary_version=canary,
            canary_percent=canary_percent,
            shadow_version=shadow,
            shadow_percent=shadow_percent,
            revision=revision,
        )
        return revision

    async def GetTraffic(self, request: Any, context: Any) -> pb.Traffic:
        traffic = self.traffic.get(request.model)
        if traffic is None:
            champion = self.aliases.get(request.model, {}).get("champion", 0)
            return pb.Traffic(model=request.model, champion_version=champion)
        return traffic


@contextlib.asynccontextmanager
async def running_traffic_registry(
    models: dict[int, TrainedModel], dataset: Dataset
) -> AsyncIterator[RunningRegistry]:
    """As support.running_registry (versions 1 and 2, version 1 the champion), with GetTraffic."""
    fake = TrafficRegistry()
    fake.add(MODEL, 1, models[1].onnx, {"features": json.dumps(dataset.features)})
    fake.add(MODEL, 2, models[2].onnx)
    fake.promote(MODEL, 1)
    server = grpc.aio.server()
    pb_grpc.add_RegistryServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield RunningRegistry(fake, f"127.0.0.1:{port}")
    finally:
        await server.stop(None)
