"""The trainer and validator through the real stack: specs, searches, gates, coalescing, manual runs."""

from __future__ import annotations

import json
import signal

import grpc
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer
from typer.testing import CliRunner

from shared.cli.main import app
from shared.cli.stack import Stack
from shared.stubs.cascade.registry.v1 import registry_pb2 as pb
from shared.stubs.cascade.registry.v1 import registry_pb2_grpc
from tests.integration.support import infer, model_ready, upload, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _breast_cancer() -> pd.DataFrame:
    return load_breast_cancer(as_frame=True).frame.sample(frac=1.0, random_state=9).reset_index(drop=True)


def _versions(stack: Stack, model: str) -> list[pb.ModelVersion]:
    with grpc.insecure_channel(stack.address("registry")) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        return list(stub.ListModelVersions(pb.ListModelVersionsRequest(model=model), timeout=10).versions)


def _cli(stack: Stack, *args: str) -> str:
    result = CliRunner().invoke(app, ["--home", str(stack.home), *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_bayesian_search_runs_within_its_budget_and_records_every_trial(
    stack: Stack, tmp_path: object
) -> None:
    model = "bc_search"
    spec = {"strategy": "bayesian", "max_trials": 6, "estimators": ["logistic_regression", "random_forest"]}
    spec_file = stack.home / "bc_search_spec.json"
    spec_file.write_text(json.dumps(spec))
    assert "spec version 1 stored" in _cli(stack, "spec", "set", model, str(spec_file))
    assert '"max_trials": 6' in _cli(stack, "spec", "show", model)

    upload(stack, model, _breast_cancer())
    wait_for(lambda: model_ready(stack, model, "1"), 120, "the searched model to serve")
    (version,) = _versions(stack, model)
    trials = json.loads(version.tags["trials"])
    assert len(trials) == 6 and [t["number"] for t in trials] == list(range(6))
    assert {t["estimator"] for t in trials} <= {"logistic_regression", "random_forest"}
    assert json.loads(version.tags["spec"])["strategy"] == "bayesian"
    best = max(t["score"] for t in trials if not t["pruned"])
    assert version.run.metrics["cv_accuracy"] == pytest.approx(best)
    assert version.run.params["estimator"] in {"logistic_regression", "random_forest"}
    assert set(json.loads(version.tags["feature_importance"])) == set(load_breast_cancer().feature_names)


def test_a_worse_candidate_is_rejected_and_serving_keeps_the_champion(stack: Stack) -> None:
    model = "bc_worse"
    frame = _breast_cancer()
    good, rest = frame.iloc[:300], frame.iloc[300:].copy()
    upload(stack, model, good)
    wait_for(lambda: model_ready(stack, model, "1"), 120, "the first champion to serve")

    # The next candidate trains only on the newest batch, whose labels are shuffled.
    spec_file = stack.home / "bc_worse_spec.json"
    spec_file.write_text(json.dumps({"window_batches": 1, "max_trials": 4}))
    _cli(stack, "spec", "set", model, str(spec_file))
    rest["target"] = np.random.default_rng(0).permutation(rest["target"].to_numpy())
    upload(stack, model, rest)

    def judged_candidate() -> pb.ModelVersion | None:
        versions = _versions(stack, model)
        return versions[1] if len(versions) == 2 and versions[1].validation.report_json else None

    candidate = wait_for(judged_candidate, 120, "the candidate's verdict")
    report = json.loads(candidate.validation.report_json)
    gates = {gate["name"]: gate for gate in report["gates"]}
    assert not report["passed"]
    assert not gates["no_regression"]["passed"]
    assert gates["no_regression"]["value"] < gates["no_regression"]["threshold"]
    assert "champion" not in candidate.aliases
    features = good.drop(columns="target").to_numpy(np.float32)[:4]
    assert infer(stack, model, features)[0] == "1"


def test_triggers_queued_while_the_trainer_is_away_coalesce_into_one_run(stack: Stack) -> None:
    model = "bc_coalesce"
    frame = _breast_cancer()
    stack.kill_service("trainer", signal.SIGTERM)
    try:
        upload(stack, model, frame.iloc[:250])
        second, _ = upload(stack, model, frame.iloc[250:])
    finally:
        stack.start_service("trainer")
    wait_for(lambda: model_ready(stack, model, "1"), 120, "the coalesced run to serve")
    versions = _versions(stack, model)
    assert [v.dataset_version for v in versions] == [second.dataset_version]  # one run, on the newest data
    assert "coalesced" in stack.log_file("trainer").read_text()


def test_cascade_train_follows_a_manual_retrain_trial_by_trial(stack: Stack) -> None:
    model = "bc_coalesce"
    wait_for(lambda: model_ready(stack, model, "1"), 120, "the model to retrain to exist")
    output = _cli(
        stack, "train", model, "--reason", "weekly refresh", "--actor", "bob", "--follow", "--timeout", "120"
    )
    assert "trial 1/" in output and "finished: registered version 2" in output
    (_, retrained) = _versions(stack, model)
    cause = json.loads(retrained.tags["cause"])
    assert cause["kind"] == "manual" and cause["summary"] == "requested by bob: weekly refresh"
    wait_for(lambda: model_ready(stack, model, "2"), 120, "the retrained version to serve")
