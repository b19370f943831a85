"""The registry as serving's `ModelSource`: champions, traffic splits, feature names and verified
artifacts."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping

import grpc

from cascade.client.channels import PLAINTEXT, ClientSecurity
from cascade.client.records import ModelVersion
from cascade.client.registry import RegistryClient
from cascade.errors import CascadeError, FailedPrecondition, RemoteFailure, Unavailable
from cascade.services.serving.repository import ModelRef
from cascade.services.serving.traffic import TrafficSplit

__all__ = ["CHAMPION", "RegistryModelSource"]

log = logging.getLogger(__name__)

CHAMPION = "champion"
FEATURES_TAG = "features"


class RegistryModelSource:
    """Serving's `ModelSource` over the registry's typed client (cascade.client.registry), whose
    failures are already Cascade errors: Unavailable while the registry cannot be reached."""

    def __init__(
        self, address: str, timeout_seconds: float = 60.0, security: ClientSecurity = PLAINTEXT
    ) -> None:
        self.address = address
        self.security = security
        self.timeout_seconds = timeout_seconds
        self._client: RegistryClient | None = None
        self._warned_no_traffic = False

    def _registry(self) -> RegistryClient:
        """The client, connected on first use: inside the running event loop its channel belongs to."""
        if self._client is None:
            self._client = RegistryClient.connect(self.address, self.security, timeout=self.timeout_seconds)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        self._client = None

    async def models_with_champion(self) -> list[str]:
        return [model.name for model in await self._registry().list_models() if CHAMPION in model.aliases]

    async def champion(self, model: str) -> ModelRef:
        return _ref(await self._registry().get_version(model, alias=CHAMPION))

    async def version(self, model: str, version: int) -> ModelRef:
        return _ref(await self._registry().get_version(model, version))

    async def traffic(self, model: str) -> TrafficSplit:
        """The model's split (GetTraffic). A registry that predates progressive delivery
        (UNIMPLEMENTED) has none: the champion alias alone decides, as before."""
        try:
            traffic = await self._registry().get_traffic(model)
        except RemoteFailure as exc:
            if exc.status != grpc.StatusCode.UNIMPLEMENTED:
                raise
            if not self._warned_no_traffic:
                log.warning("the registry has no traffic splits (%s); serving champions only", exc)
            self._warned_no_traffic = True
            return TrafficSplit(model)
        return TrafficSplit(
            model=model,
            champion_version=traffic.champion_version,
            canary_version=traffic.canary_version,
            canary_percent=traffic.canary_percent,
            shadow_version=traffic.shadow_version,
            shadow_percent=traffic.shadow_percent,
            revision=traffic.revision,
        )

    async def artifact(self, ref: ModelRef) -> bytes:
        """Download the artifact; refuse it unless its sha256 is both the one streamed with it
        (checked by the client's verified download) and the one the registry recorded for the
        version. A download the registry refuses for good (the artifact gone, no permission) is a
        FailedPrecondition too: the version cannot be served, and the repository reports it so."""
        try:
            data = await self._registry().download_artifact(ref.model, ref.version)
        except (Unavailable, RemoteFailure, FailedPrecondition):
            raise
        except CascadeError as exc:
            raise FailedPrecondition(f"download refused: {exc}") from exc
        actual = hashlib.sha256(data).hexdigest()
        if actual != ref.artifact_sha256:
            raise FailedPrecondition(
                f"artifact of {ref.model} version {ref.version} has sha256 {actual}, but the registry "
                f"recorded {ref.artifact_sha256 or 'none'}; refused"
            )
        return data


def _ref(version: ModelVersion) -> ModelRef:
    return ModelRef(
        model=version.model,
        version=version.version,
        artifact_sha256=version.artifact_sha256,
        features=_feature_names(version.model, version.tags),
    )


def _feature_names(model: str, tags: Mapping[str, str]) -> tuple[str, ...]:
    """Column names from the version's "features" tag (a JSON list of strings), if it has one."""
    raw = tags.get(FEATURES_TAG)
    if not raw:
        return ()
    try:
        names = json.loads(raw)
    except json.JSONDecodeError:
        names = None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        log.warning("model %s: tag %r is not a JSON list of names; using x0, x1, ...", model, FEATURES_TAG)
        return ()
    return tuple(names)
