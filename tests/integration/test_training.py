"""The trainer and validator through the real stack: specs, searches, gates, coalescing, manual runs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
from aiokafka.partitioner import DefaultPartitioner
from sklearn.datasets import load_breast_cancer, make_classification
from typer.testing import CliRunner

from cascade.cli.main import app
from cascade.stack import Stack, check_health
from cascade.stubs.cascade.registry.v1 import registry_pb2 as pb
from cascade.stubs.cascade.registry.v1 import registry_pb2_grpc
from tests.integration.support import infer, model_ready, upload, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SECOND_TRAINER_PORT = 29062


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
    assert "trial 1/" in output and "finished: the artifact is the champion v1's, byte for byte" in output
    # Same data version, same spec and seed: the same artifact, so no second version to validate;
    # the run is recorded on v1 with its cause.
    [only] = _versions(stack, model)
    reruns = [json.loads(value) for name, value in only.tags.items() if name.startswith("rerun:")]
    assert len(reruns) == 1 and reruns[0]["dataset_version"] == only.dataset_version
    cause = reruns[0]["cause"]
    # The CLI calls as the stack's admin; the actor it claimed (--actor bob) is kept beside.
    assert (
        cause["kind"] == "manual" and cause["summary"] == "requested by admin (claimed bob): weekly refresh"
    )


def _training_spans(log: Path, model: str) -> list[tuple[datetime, datetime]]:
    """(started, registered) times of each run of `model` in one trainer's JSON log."""
    started: datetime | None = None
    spans = []
    for line in log.read_text().splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry["message"].startswith(f"training {model} on"):
            started = datetime.fromisoformat(entry["time"])
        elif entry["message"].startswith(f"registered {model} v") and started is not None:
            spans.append((started, datetime.fromisoformat(entry["time"])))
    return spans


def _owned_partitions(log: Path, topic: str) -> set[int]:
    """The partitions of `topic` a trainer holds after its latest rebalance, from its log."""
    owned: set[int] = set()
    for line in log.read_text().splitlines():
        if "assigned to partitions" in line and f"topic='{topic}'" in line:
            owned = {int(n) for n in re.findall(rf"topic='{re.escape(topic)}', partition=(\d+)", line)}
    return owned


def _name_on_partition(partitions: set[int], taken: str = "") -> str:
    """A model name whose Kafka key lands on one of `partitions` (keys hash with murmur2)."""
    partitioner = DefaultPartitioner()
    return next(
        name
        for name in (f"par_{n}" for n in range(100))
        if name != taken and partitioner(name.encode(), [0, 1, 2], [0, 1, 2]) in partitions
    )


def test_two_trainer_processes_share_the_work_and_train_two_models_at_once(stack: Stack) -> None:
    log = stack.home / "logs" / "trainer-2.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    environment |= stack.service_env("trainer") | {
        "CASCADE_TRAINER_GRPC_PORT": str(SECOND_TRAINER_PORT),
        "CASCADE_TRAINER_METRICS_PORT": "0",
    }
    topic = f"{stack.config.topic_prefix}.data-arrived.v1"
    with log.open("ab") as output:
        second = subprocess.Popen(
            [sys.executable, "-m", "cascade.services.trainer"],
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
    try:
        address = f"127.0.0.1:{SECOND_TRAINER_PORT}"
        wait_for(lambda: check_health(address) == "SERVING", 60, "a second trainer")
        owned = wait_for(lambda: _owned_partitions(log, topic), 60, "the group to give it partitions")
        # One model whose key the second trainer owns, one whose key the first trainer owns.
        models = (_name_on_partition(owned), _name_on_partition({0, 1, 2} - owned))
        for number, model in enumerate(models):
            x, y = make_classification(n_samples=3_000, n_features=30, n_informative=10, random_state=number)
            upload(stack, model, pd.DataFrame(x, columns=[f"f{i}" for i in range(30)]).assign(target=y))
        for model in models:
            wait_for(lambda m=model: model_ready(stack, m, "1"), 180, f"{model} to serve")  # type: ignore[misc]
    finally:
        second.terminate()
        second.wait(30)

    second_runs = _training_spans(log, models[0])
    first_runs = _training_spans(stack.log_file("trainer"), models[1])
    assert len(second_runs) == 1 and not _training_spans(log, models[1])
    assert len(first_runs) == 1 and not _training_spans(stack.log_file("trainer"), models[0])
    (start_a, end_a), (start_b, end_b) = second_runs[0], first_runs[0]
    assert start_a < end_b and start_b < end_a, "the two runs did not overlap in time"
