"""One study spread over trainer processes (services/trainer/distributed.py), on SQLite and on a
real PostgreSQL: real processes (multiprocessing spawn) race for the study's slots and together run
exactly its budget; a process killed mid-trial has that trial failed by its stale heartbeat and
retried, and the study still finishes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from sklearn.datasets import load_breast_cancer

from cascade.services.trainer.attribution import ExplainLimits
from cascade.services.trainer.distributed import (
    CLAIMED_BY,
    SharedStudy,
    StudyStorage,
    open_study,
    study_name,
    wait_for_slots,
    work_on,
)
from cascade.services.trainer.training import join_study, train
from cascade.training_spec import TrainingSpec
from tests.databases import database_url_for

BUDGET = 8
NO_ATTRIBUTION = ExplainLimits(max_evaluations=1)  # the search is under test, not the explanation
SPEC = TrainingSpec(
    strategy="random",
    estimators=["logistic_regression", "random_forest"],
    max_trials=BUDGET,
    max_seconds=300,
    seed=7,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url_for(request, "trainer_studies", f"sqlite:///{tmp_path / 'studies.db'}")


def _storage(url: str) -> StudyStorage:
    # A grace of a few heartbeats: on a loaded machine a live participant's beat can be late.
    return StudyStorage(url, heartbeat_seconds=1, grace_seconds=8, poll_seconds=0.2)


def _frame() -> Any:
    return load_breast_cancer(as_frame=True).frame


def _owner(url: str, name: str) -> dict[str, Any]:
    frame = _frame()
    features = [c for c in frame.columns if c != "target"]
    shared = SharedStudy(_storage(url), name, worker="owner")
    result = train(
        frame, features, "target", "classification", spec=SPEC, shared=shared, explain=NO_ATTRIBUTION
    )
    return {"params": result.params, "metrics": result.metrics, "trials": result.trials}


def _joiner(url: str, name: str, worker: str) -> int:
    frame = _frame()
    features = [c for c in frame.columns if c != "target"]
    return join_study(
        frame, features, "target", "classification", SPEC, SharedStudy(_storage(url), name, worker)
    )


def _stuck(url: str, name: str) -> None:
    """A participant that claims a trial and never finishes it (until it is killed)."""
    study = open_study(
        _storage(url).open(), name, optuna.samplers.RandomSampler(), optuna.pruners.NopPruner()
    )
    wait_for_slots(study, time.monotonic() + 120, 0.1)

    def hang(trial: optuna.Trial) -> float:
        time.sleep(3600)
        return 0.0

    work_on(study, hang, time.monotonic() + 3600, f"stuck-{os.getpid()}", poll_seconds=0.1)


def _executor(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


@pytest.mark.timeout(900)  # three interpreters importing scikit-learn and Optuna on a shared machine
def test_three_processes_on_one_study_run_exactly_its_budget(storage_url: str) -> None:
    name = study_name("breast", "version-1:spec")
    with _executor(3) as pool:
        joiners = [pool.submit(_joiner, storage_url, name, f"joiner-{i}") for i in range(2)]
        owner = pool.submit(_owner, storage_url, name)
        result = owner.result(timeout=600)
        ran_by_joiners = [j.result(timeout=600) for j in joiners]

    trials = _trials(storage_url, name)
    assert len(trials) == BUDGET  # no process created a trial beyond the slots
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    claimed = [t.system_attrs[CLAIMED_BY] for t in trials]
    assert claimed.count("owner") + sum(ran_by_joiners) == BUDGET
    # The owner reports every process's trials, and picked the best of all of them.
    assert sorted(t["number"] for t in result["trials"]) == list(range(BUDGET))
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value or 0.0)
    assert result["params"]["estimator"] == best.params["estimator"]
    assert result["metrics"]["cv_accuracy"] == pytest.approx(best.value)


def test_the_same_run_key_resumes_its_study_without_adding_slots(storage_url: str) -> None:
    name = study_name("breast", "version-1:spec")
    assert name == study_name("breast", "version-1:spec") != study_name("breast", "version-2:spec")
    first = _owner(storage_url, name)
    again = _owner(storage_url, name)
    assert len(_trials(storage_url, name)) == BUDGET  # the redelivered run found its budget spent
    assert again["params"] == first["params"]


@pytest.mark.timeout(900)
def test_a_killed_participants_trial_is_failed_and_retried_and_the_study_finishes(storage_url: str) -> None:
    name = study_name("breast", "version-3:spec")
    with _executor(1) as pool:
        stuck = multiprocessing.get_context("spawn").Process(target=_stuck, args=(storage_url, name))
        stuck.start()
        try:
            owner = pool.submit(_owner, storage_url, name)
            victim = _wait_for_claim(storage_url, name, "stuck-")
            assert victim.system_attrs[CLAIMED_BY] == f"stuck-{stuck.pid}"
            os.kill(stuck.pid, signal.SIGKILL)  # mid-trial: no tell, no last heartbeat
            result = owner.result(timeout=600)
        finally:
            stuck.kill()
            stuck.join()

    trials = _trials(storage_url, name)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [victim.number]
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    # The same trial again (the random search's point fixed in the slot), not a new one.
    assert retry[0].params == victim.system_attrs["fixed_params"]
    scored = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(scored) == BUDGET
    assert len(result["trials"]) == BUDGET


def _wait_for_claim(url: str, name: str, worker_prefix: str) -> optuna.trial.FrozenTrial:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            trials = _trials(url, name)
        except KeyError:  # the study does not exist yet
            trials = []
        mine = [t for t in trials if str(t.system_attrs.get(CLAIMED_BY, "")).startswith(worker_prefix)]
        if mine:
            return mine[0]
        time.sleep(0.1)
    raise AssertionError(f"{worker_prefix}* claimed no trial")


def _open_and_count(url: str) -> int:
    study = open_study(
        _storage(url).open(), "fresh", optuna.samplers.RandomSampler(), optuna.pruners.NopPruner()
    )
    return len(study.get_trials(deepcopy=False))


def test_processes_opening_a_fresh_sqlite_store_at_once_all_get_the_one_study(tmp_path: Path) -> None:
    # Optuna's table creation and schema stamp race with themselves on a fresh file (a constraint
    # or lock error for the loser): StudyStorage.open tries again, within its budget.
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    with _executor(6) as pool:
        counts = list(pool.map(_open_and_count, [url] * 6))
    assert counts == [0] * 6
    assert len(optuna.get_all_study_names(storage=url)) == 1
