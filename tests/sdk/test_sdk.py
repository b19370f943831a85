"""The SDK's entry point: `from cascade import Client`, light to import, aimed at a local stack."""

from __future__ import annotations

import subprocess
import sys

import pytest

import cascade
from cascade.client.sdk import LOCAL_PORTS, AsyncClient, Client
from cascade.stack import DEFAULT_PORTS


def test_the_sdk_aims_at_the_ports_the_local_stack_listens_on() -> None:
    assert dict(LOCAL_PORTS) == dict(DEFAULT_PORTS)


def test_client_is_importable_from_cascade_and_unknown_names_are_attribute_errors() -> None:
    assert cascade.Client is Client and cascade.AsyncClient is AsyncClient
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = cascade.no_such_name  # type: ignore[attr-defined]


def test_importing_the_sdk_loads_none_of_the_services_libraries() -> None:
    heavy = ["faststream", "aiokafka", "onnxruntime", "optuna", "skl2onnx", "sklearn", "sqlalchemy"]
    script = (
        f"import sys\nfrom cascade import Client\nprint(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == ""


def test_addresses_default_to_the_local_stack_and_can_be_overridden() -> None:
    with Client({"serving": "10.0.0.7:9001"}, host="localhost") as client:
        assert client.addresses["registry"] == "localhost:50054"
        assert client.addresses["serving"] == "10.0.0.7:9001"
