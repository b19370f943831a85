"""A model's traffic split as serving follows it: which loaded version answers a request, and which
one scores it beside the answer. No transport.

`TrafficSplit` is what the registry says (GetTraffic). `Route` is that split resolved to loaded
versions: immutable, installed per model with one assignment by the repository, so a request that
picked its version from one route finishes on it while the next request sees the new route.

Routing a request without an explicit version: the canary answers when a stable hash of the request's
routing key falls inside the canary's percent, else the champion. The hash (blake2b of the model and
the key) is the same in every replica and process, so a key sticks to one side of the split for as
long as the split holds, and a larger percent only adds keys to the canary. An empty key (no
`routing_key` parameter and no request id) is routed at random.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:  # repository imports this module; LoadedModel is only a type here
    from cascade.services.serving.repository import LoadedModel

__all__ = ["ROUTING_KEY", "Role", "Route", "Routed", "RoutingKey", "TrafficSplit", "share_of"]

# The request parameter (OIP `parameters`, gRPC and REST alike) that names what a request belongs
# to (a user, a session) so that its requests stay on one side of the split.
ROUTING_KEY = "routing_key"

Role = Literal["champion", "canary"]
# A request's routing key, or how to read it (only read when the route has a canary to split to).
RoutingKey = str | Callable[[], str]

_HASH_SPAN = float(1 << 64)


@dataclass(frozen=True)
class TrafficSplit:
    """A model's split as the registry keeps it. Version 0: none; percents are 0..100."""

    model: str
    champion_version: int = 0
    canary_version: int = 0
    canary_percent: float = 0.0
    shadow_version: int = 0
    shadow_percent: float = 0.0
    # Grows with every change; a replica never installs a split older than the one it follows.
    revision: int = 0


class Routed(NamedTuple):  # a tuple: made on every request, and cheaper than a dataclass
    """Where one request went: the version that answers it, its side of the split, and the route it
    was picked from (None when the model has none). `explicit`: the request named its version,
    bypassing the split, so it counts in no live comparison."""

    model: LoadedModel
    role: Role
    route: Route | None
    explicit: bool = False


@dataclass(frozen=True, eq=False)
class Route:
    """One model's split over loaded versions. Never mutated: the repository installs a new one."""

    champion: LoadedModel
    canary: LoadedModel | None = None
    canary_percent: float = 0.0
    shadow: LoadedModel | None = None
    shadow_percent: float = 0.0
    revision: int = 0
    # The answer of every request the champion takes, made once.
    _to_champion: Routed = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_to_champion", Routed(self.champion, "champion", self))

    @property
    def has_challenger(self) -> bool:
        """Whether a canary answers or a shadow scores some requests: then live stats are kept."""
        return (self.canary is not None and self.canary_percent > 0) or (
            self.shadow is not None and self.shadow_percent > 0
        )

    def pick(self, routing_key: RoutingKey) -> Routed:
        """The version that answers a request with this routing key ("" for none: at random)."""
        canary = self.canary
        if canary is not None and self.canary_percent > 0:
            key = routing_key() if callable(routing_key) else routing_key
            share = share_of(self.champion.name, key) if key else random.random() * 100
            if share < self.canary_percent:
                return Routed(canary, "canary", self)
        return self._to_champion

    def samples_shadow(self) -> bool:
        """Whether the shadow also scores one more request the champion answered (a random share)."""
        return self.shadow is not None and random.random() * 100 < self.shadow_percent

    def role_of(self, version: int) -> Role:
        return "canary" if self.canary is not None and self.canary.version == version else "champion"

    def pinned(self) -> set[int]:
        """The versions this route needs loaded."""
        return {model.version for model in (self.champion, self.canary, self.shadow) if model is not None}

    def with_champion(self, champion: LoadedModel) -> Route:
        """This route with another champion (a promotion); a canary or shadow that is now the
        champion leaves its role."""
        return dataclasses.replace(
            self,
            champion=champion,
            canary=None
            if self.canary is not None and self.canary.version == champion.version
            else self.canary,
            shadow=None
            if self.shadow is not None and self.shadow.version == champion.version
            else self.shadow,
        )

    def same_split(self, other: Route) -> bool:
        """Whether `other` routes exactly as this one does (same versions, shares and revision)."""
        return _signature(self) == _signature(other)

    def describe(self) -> str:
        parts = [f"champion v{self.champion.version}"]
        if self.canary is not None:
            parts.append(f"canary v{self.canary.version} at {self.canary_percent:g}%")
        if self.shadow is not None:
            parts.append(f"shadow v{self.shadow.version} at {self.shadow_percent:g}%")
        return ", ".join(parts) + f" (revision {self.revision})"


def share_of(model: str, routing_key: str) -> float:
    """Where `routing_key` falls in 0..100 for `model`: stable across processes and restarts."""
    digest = hashlib.blake2b(f"{model}\x00{routing_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _HASH_SPAN * 100


def _signature(route: Route) -> tuple[object, ...]:
    def version(model: LoadedModel | None) -> int:
        return 0 if model is None else model.version

    return (
        version(route.champion),
        version(route.canary),
        route.canary_percent,
        version(route.shadow),
        route.shadow_percent,
        route.revision,
    )
