"""How `cascade train --follow` and `cascade ingest --follow` read what they follow: the run's
progress, the dead letter of a refused request, then the version through validation and promotion
to serving (against a real registry over loopback; serving's answer is a stand-in). The whole path
runs on the real stack in tests/integration/test_cli_follow.py and test_cli_train_follow.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from cascade.cli.errors import EXIT_FAILURE, EXIT_TIMEOUT, EXIT_USAGE
from cascade.cli.follow import (
    CascadeFailed,
    Challenger,
    Deadline,
    Reproduced,
    Served,
    follow_version,
    outcome_lines,
    raise_if_refused,
    report_progress,
)
from cascade.client.calls import RemoteService
from cascade.client.channels import PLAINTEXT, open_channel
from cascade.client.registry import RegistryClient
from cascade.client.sdk import AsyncClient
from cascade.events import GateResult, ModelValidated, TrainingProgress, TrainingRequested
from cascade.messaging import DLQ_REASON, DLQ_SERVICE
from cascade.services.trainer.training import build_pipeline, export_onnx
from cascade.stubs.cascade.registry.v1 import registry_pb2 as pb
from tests.cli.test_models import Registry, _create, _registry


@dataclass
class Record:
    value: bytes
    headers: list[tuple[str, bytes]]


def _request() -> TrainingRequested:
    return TrainingRequested(source="test", subject="m", model="m", actor="a", reason="")


def test_the_dead_letter_of_the_request_is_a_refusal_with_its_reason() -> None:
    request = _request()
    letter = Record(
        request.model_dump_json().encode(),
        [(DLQ_REASON, b"NotFound: dataset m has no versions"), (DLQ_SERVICE, b"trainer")],
    )

    with pytest.raises(
        CascadeFailed, match="trainer refused the request: NotFound: dataset m has no versions"
    ):
        raise_if_refused(letter, request.id)


def test_dead_letters_of_other_messages_are_not_ours() -> None:
    other = Record(_request().model_dump_json().encode(), [(DLQ_REASON, b"whatever")])

    raise_if_refused(other, _request().id)  # another request's letter
    raise_if_refused(Record(b"\xff not json", []), "id")


def test_a_failed_progress_event_of_the_run_fails_and_a_finished_one_ends() -> None:
    def progress(stage: str, run_key: str) -> bytes:
        event = TrainingProgress(
            source="t", subject="m", model="m", run_key=run_key, stage=stage, message="why", model_version=2
        )
        return event.model_dump_json().encode()

    def ours(event: TrainingProgress) -> bool:
        return event.run_key.endswith("req-1")

    printed: list[str] = []
    finished = report_progress(progress("finished", "v1:abc:manual:req-1"), ours, printed.append)
    assert finished is not None and finished.model_version == 2
    assert printed == ["finished: why"]
    assert report_progress(progress("finished", "v1:abc:manual:req-2"), ours, printed.append) is None
    with pytest.raises(CascadeFailed, match="training m failed: why") as failed:
        report_progress(progress("failed", "v1:abc:manual:req-1"), ours, printed.append)
    assert failed.value.exit_code == EXIT_FAILURE


# ---------------------------------------------------------------------- the version's stages


@pytest.fixture(scope="module")
def onnx_model() -> bytes:
    frame = load_breast_cancer(as_frame=True).frame
    pipeline = build_pipeline("logistic_regression", "classification", {}, seed=0)
    pipeline.fit(frame.drop(columns="target").to_numpy(np.float32), frame["target"])
    return export_onnx(pipeline, 30, "classification")


@dataclass
class Serving:
    """Serving's answer to ModelReady: not yet, then yes (as a hot swap takes a moment)."""

    answers: list[bool] = field(default_factory=lambda: [False, True])

    async def model_ready(self, name: str, version: str = "") -> bool:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


async def _follow(registry: Registry, model: str, number: int, seconds: float = 30, run_key: str = "") -> Any:
    printed: list[str] = []
    async with open_channel(registry.address, PLAINTEXT) as channel:
        client = cast(
            AsyncClient, _Client(RegistryClient(RemoteService("registry", channel, registry.address)))
        )
        outcome = await follow_version(
            client, model, number, Deadline(seconds), printed.append, run_key=run_key
        )
    return outcome, printed


@dataclass
class _Client:
    registry: RegistryClient
    serving: Serving = field(default_factory=Serving)


def _verdict(model: str, version: int, passed: bool) -> ModelValidated:
    gate = GateResult(
        name="enough_fresh_rows",
        passed=passed,
        value=5 if not passed else 50,
        threshold=10,
        detail="fresh rows",
    )
    return ModelValidated(
        source="test", subject=model, model=model, model_version=version, passed=passed, gates=[gate]
    )


async def test_a_passed_version_is_followed_to_serving_stage_by_stage(
    tmp_path: Path, onnx_model: bytes
) -> None:
    async with _registry(tmp_path) as registry:
        await _create(registry, "good", onnx_model, 0.93)
        await registry.core.on_validated(_verdict("good", 1, passed=True))

        outcome, printed = await _follow(registry, "good", 1)

    assert isinstance(outcome, Served) and outcome.version.version == 1
    assert printed == [
        "  trained v1 (cv_accuracy=0.93)",
        "  validated v1: passed (1 gates)",
        "  promoted v1 to champion",
        "  serving v1",
    ]
    assert outcome_lines("good", outcome, 2.04) == ["Served good v1 after 2.0 s."]


async def test_a_failed_version_ends_with_its_gates_and_the_failed_precondition_code(
    tmp_path: Path, onnx_model: bytes
) -> None:
    async with _registry(tmp_path) as registry:
        await _create(registry, "bad", onnx_model, 0.6)
        await registry.core.on_validated(_verdict("bad", 1, passed=False))

        with pytest.raises(CascadeFailed) as failed:
            await _follow(registry, "bad", 1)

    assert failed.value.exit_code == EXIT_USAGE
    assert str(failed.value) == (
        "bad v1 failed validation: enough_fresh_rows failed: 5 vs threshold 10 (fresh rows)"
    )


async def test_a_version_never_judged_times_out_with_its_own_code(tmp_path: Path, onnx_model: bytes) -> None:
    async with _registry(tmp_path) as registry:
        await _create(registry, "slow", onnx_model, 0.9)

        with pytest.raises(CascadeFailed, match="waiting for the validator's verdict on slow v1") as late:
            await _follow(registry, "slow", 1, seconds=1.0)

    assert late.value.exit_code == EXIT_TIMEOUT


async def test_a_run_that_registered_no_version_of_its_own_is_a_reproduction(
    tmp_path: Path, onnx_model: bytes
) -> None:
    async with _registry(tmp_path) as registry:
        await _create(registry, "same", onnx_model, 0.9)

        outcome, printed = await _follow(registry, "same", 1, run_key="another run's key")

    assert isinstance(outcome, Reproduced) and printed == []
    assert outcome_lines("same", outcome, 1.0) == [
        "No new version: the run reproduced same v1 byte for byte; v1 stays."
    ]


async def test_a_passed_version_under_a_manual_policy_ends_as_challenger(
    tmp_path: Path, onnx_model: bytes
) -> None:
    async with _registry(tmp_path) as registry:
        await registry.stub.RegisterModel(
            pb.RegisterModelRequest(name="held", promotion_policy=pb.PROMOTION_POLICY_MANUAL)
        )
        await _create(registry, "held", onnx_model, 0.9)
        await registry.core.on_validated(_verdict("held", 1, passed=True))

        outcome, printed = await _follow(registry, "held", 1)

    assert isinstance(outcome, Challenger)
    assert printed[-2:] == [
        "  validated v1: passed (1 gates)",
        "  awaiting approval: v1 is challenger (manual promotion policy)",
    ]
    assert outcome_lines("held", outcome, 1.0) == [
        "held v1 passed validation and is challenger, awaiting approval (manual promotion policy); "
        "`cascade models approve held 1 --reason ...` serves it."
    ]
