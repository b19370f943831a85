"""Client records as a page or command receives them, for tests that need one without a registry:
a ready version of a "cancer" model with what each test changes."""

from __future__ import annotations

import dataclasses
from typing import Any

from cascade.client.records import ModelVersion, TrainingRun, VersionStatus

_READY_VERSION = ModelVersion(
    model="cancer",
    version=2,
    status=VersionStatus.ready,
    artifact_sha256="0" * 64,
    artifact_size=1,
    dataset="cancer",
    dataset_version="a" * 64,
    run=TrainingRun("run", {}, {"cv_accuracy": 0.97}, 0, 1.5, ""),
    aliases=("champion",),
    tags={},
    inputs=(),
    outputs=(),
    created_at=None,
    idempotency_key="",
    description="",
    validation_passed=True,
    validation_report_json="{}",
)


def model_version(**changes: Any) -> ModelVersion:
    return dataclasses.replace(_READY_VERSION, **changes)
