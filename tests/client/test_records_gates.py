"""ModelVersion.gates reads the validator's verdict (the ModelValidated event the registry keeps)."""

from __future__ import annotations

import json

from cascade.client.records import GateVerdict, ModelVersion
from cascade.stubs.cascade.registry.v1 import registry_pb2


def _version(report: object) -> ModelVersion:
    proto = registry_pb2.ModelVersion(model="m", version=2)
    proto.validation.passed = False
    proto.validation.report_json = report if isinstance(report, str) else json.dumps(report)
    return ModelVersion.of(proto)


def test_gates_are_read_in_order_with_values_and_thresholds() -> None:
    version = _version(
        {
            "passed": False,
            "gates": [
                {"name": "schema", "passed": True, "value": None, "threshold": None, "detail": ""},
                {"name": "accuracy", "passed": False, "value": 0.9, "threshold": 0.95, "detail": "worse"},
            ],
        }
    )
    assert [gate.name for gate in version.gates] == ["schema", "accuracy"]
    assert version.failed_gates == (GateVerdict("accuracy", False, 0.9, 0.95, "worse"),)
    assert version.failed_gates[0].describe() == "accuracy failed: 0.9 vs threshold 0.95 (worse)"


def test_a_report_that_is_not_the_validators_has_no_gates() -> None:
    assert _version("not json").gates == ()
    assert _version({"gates": "nope"}).gates == ()
    assert ModelVersion.of(registry_pb2.ModelVersion(model="m", version=1)).gates == ()
