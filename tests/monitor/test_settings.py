from __future__ import annotations

import pytest

from cascade.services.monitor.settings import MonitorSettings


def test_defaults() -> None:
    settings = MonitorSettings()
    assert (settings.grpc_port, settings.registry_address, settings.ingest_address) == (
        50055,
        "127.0.0.1:50054",
        "127.0.0.1:50051",
    )
    assert (settings.window_size, settings.evaluate_every, settings.p_value_threshold) == (200, 50, 0.05)


def test_read_from_the_monitor_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASCADE_MONITOR_WINDOW_SIZE", "40")
    monkeypatch.setenv("CASCADE_MONITOR_REGISTRY_ADDRESS", "registry:50054")
    settings = MonitorSettings()
    assert (settings.window_size, settings.registry_address) == (40, "registry:50054")


def test_every_field_is_described() -> None:
    assert all(field.description for field in MonitorSettings.model_fields.values())
