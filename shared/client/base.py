"""What every typed client shares: the service it calls, a bound on each call, and a channel of its
own when made by `connect`, closed by `close()` or by leaving `async with`."""

from __future__ import annotations

from types import TracebackType
from typing import ClassVar, Self

from cascade.client.calls import RemoteService
from cascade.client.channels import PLAINTEXT, ClientSecurity, open_channel

__all__ = ["ServiceClient"]


class ServiceClient:
    """A client of one service. `timeout` (seconds) bounds every call; None: no bound."""

    # The service's name in error messages ("registry at 127.0.0.1:50054: ...").
    SERVICE: ClassVar[str]

    def __init__(self, service: RemoteService, *, timeout: float | None = None) -> None:
        self.service = service
        self.timeout = timeout

    @classmethod
    def connect(
        cls, address: str, security: ClientSecurity = PLAINTEXT, *, timeout: float | None = None
    ) -> Self:
        """A client on a channel of its own, closed by `close()` (or leaving `async with`)."""
        return cls(RemoteService(cls.SERVICE, open_channel(address, security), address), timeout=timeout)

    async def close(self) -> None:
        await self.service.channel.close(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()
