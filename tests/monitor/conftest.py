from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .support import Dependencies, serve_dependencies


@pytest.fixture
async def dependencies() -> AsyncIterator[Dependencies]:
    async with serve_dependencies() as served:
        yield served
