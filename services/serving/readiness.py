"""Whether a serving replica is ready: true only once it has loaded what the registry names.

A replica starts answering as soon as its gRPC and REST servers listen, while its champions (and
any canary and shadow) load in the background. Until the first sync has settled every model the
registry names, the replica is *not ready*: health (grpc.health.v1, the service "" that every
probe asks), ServerReady and `/v2/health/ready` say so, and a request for a model still loading is
UNAVAILABLE ("model X is loading", which clients retry), not NOT_FOUND. A model the registry does
not name stays NOT_FOUND once the registry has been read.

A model is settled when its champion and its traffic split are installed, or when one of its
versions was refused (corrupt, incompatible, ...: reported with a reason by the repository), so a
bad model never keeps a replica unready.

A registry that cannot be reached, or a load that does not finish, keeps the replica unready for
at most `budget_seconds` (ServingSettings.startup_budget_seconds). Then the replica becomes ready
with what it has, says so in an error log, and keeps loading in the background: a restart cannot
make the registry answer, and a replica that never turns ready is killed by its startup probe and
blocks `depends_on: service_healthy`. Models still loading keep answering UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from cascade.errors import CascadeError, Unavailable
from cascade.grpc_io import ServicerContext
from cascade.healthcheck import REASON_METADATA_KEY

__all__ = ["GatedHealth", "StartupLoad"]

log = logging.getLogger(__name__)


_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class StartupLoad:
    """The initial sync's progress, as readiness and request errors need it. No transport.

    The repository reports to it (`listed`, `settled`, `retrying`, `finished`); `wait_ready` ends
    when every listed model is settled, or when the budget runs out."""

    def __init__(self, budget_seconds: float) -> None:
        self.budget_seconds = budget_seconds
        self._listed = False
        self._loading: set[str] = set()
        self._settled: set[str] = set()
        self._refused: dict[str, str] = {}
        self._waiting_for = ""  # the registry's last error, while it cannot be read
        self._finished = False  # the initial sync is over: nothing listed is left to load
        self._gave_up = False  # the budget ran out first
        self._ready = asyncio.Event()

    # -- what the repository reports -----------------------------------------------------------
    def listed(self, models: Iterable[str]) -> None:
        """The registry names these models (each has a champion); a model settled earlier stays so."""
        self._listed = True
        self._waiting_for = ""
        self._loading = set(models) - self._settled
        self._check()

    def settled(self, model: str, refused: str = "") -> None:
        """`model` is served as the registry says, or one of its versions was refused (`refused`)."""
        self._loading.discard(model)
        self._settled.add(model)
        if refused:
            self._refused[model] = refused
        self._check()

    def retrying(self, error: str) -> None:
        """The registry could not be read (or failed inside); the sync tries again."""
        self._waiting_for = error

    def finished(self) -> None:
        """The initial sync is over (done, or stopped for good): there is nothing more to wait for."""
        self._finished = True
        self._loading.clear()
        self._check()

    # -- what readiness and requests ask -------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def gave_up(self) -> bool:
        """Whether the budget ran out before every listed model was settled."""
        return self._gave_up

    def loading(self) -> list[str]:
        """The models the registry names that are not loaded yet, by name."""
        return sorted(self._loading)

    def refused(self) -> dict[str, str]:
        """Models whose version was refused during the initial sync, and why."""
        return dict(self._refused)

    def reason(self) -> str:
        """Why the replica is not ready, in one line; "" when it is."""
        if self.ready:
            return ""
        if not self._listed:
            waiting = f" (last error: {self._waiting_for})" if self._waiting_for else ""
            return f"not ready: reading the registry's models{waiting}"
        count = len(self._loading)
        return f"not ready: loading {count} model{'' if count == 1 else 's'} ({', '.join(self.loading())})"

    def missing(self, model: str) -> CascadeError | None:
        """The error for a request naming `model` (or a version of it) that is not loaded: UNAVAILABLE
        while it is loading, or while the registry has not been read at start-up; None when the
        model is simply not served (the caller's NOT_FOUND)."""
        if model in self._loading:
            return Unavailable(f"model {model!r} is loading; retry shortly")
        if not self._listed and not self.ready:
            return Unavailable(
                f"serving is starting and has not read the registry's models yet, {model!r} among "
                "them perhaps; retry shortly"
            )
        return None

    async def wait_ready(self) -> None:
        """Until ready: every listed model settled, or the budget spent (then logged as an error)."""
        try:
            await asyncio.wait_for(self._ready.wait(), self.budget_seconds)
        except TimeoutError:
            self._gave_up = True
            log.error(
                "%s after %.0f s: ready anyway, serving what is loaded; the rest keeps loading",
                self.reason(),
                self.budget_seconds,
            )
            self._ready.set()
            return
        if self._refused:
            log.warning(
                "ready; refused at start-up: %s",
                "; ".join(f"{name}: {why}" for name, why in sorted(self._refused.items())),
            )
        else:
            log.info("ready: every model the registry names is loaded")

    # -- internals -----------------------------------------------------------------------------
    def _check(self) -> None:
        if (self._listed and not self._loading) or self._finished:
            self._ready.set()


class GatedHealth(HealthServicer):  # type: ignore[misc]  # grpc_health has no type hints
    """grpc.health.v1 whose `gated` services (the server "" and the inference service) stay
    NOT_SERVING until `open()`: the runtime (cascade.service) sets them SERVING once Kafka is
    connected, and that is remembered and applied at `open()`. A Check answered NOT_SERVING
    before then carries `reason()` in the trailing metadata that cascade.healthcheck prints."""

    def __init__(self, gated: Sequence[str], reason: Callable[[], str] | None = None) -> None:
        super().__init__()
        self._gated = frozenset(gated)
        self._wanted: dict[str, health_pb2.HealthCheckResponse.ServingStatus.ValueType] = {}
        self._open = False
        self._reason = reason

    async def set(self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        if service in self._gated and not self._open:
            self._wanted[service] = status
            status = _NOT_SERVING
        await super().set(service, status)

    async def open(self) -> None:
        """Ready: each gated service gets the status the runtime last gave it."""
        self._open = True
        for service, status in self._wanted.items():
            await super().set(service, status)

    async def open_when_ready(self, startup: StartupLoad) -> None:
        """`open()` once `startup` is ready (its budget included)."""
        await startup.wait_ready()
        await self.open()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        response: health_pb2.HealthCheckResponse = await super().Check(request, context)
        if request.service in self._gated and not self._open and self._reason is not None:
            why = self._reason()
            if why:
                context.set_trailing_metadata(((REASON_METADATA_KEY, why),))
        return response
