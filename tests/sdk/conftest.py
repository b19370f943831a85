"""The SDK's tests reuse serving's test rig: a real serving process over a fake registry."""

from __future__ import annotations

from tests.serving.conftest import dataset, models, module_registry

__all__ = ["dataset", "models", "module_registry"]
