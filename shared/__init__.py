"""Cascade: the SDK (`from cascade import Client`), and the library its services share: events,
settings, messaging, telemetry, errors and gRPC stubs.

`Client` and `AsyncClient` load on first use, so `import cascade` stays light for every service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cascade.client.sdk import AsyncClient, Client

__all__ = ["AsyncClient", "Client"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from cascade.client import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'cascade' has no attribute {name!r}")
