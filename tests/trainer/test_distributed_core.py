"""Two trainer cores ("replicas") sharing a study through SQLite storage, with in-memory fakes of
ingest and the registry: the owner announces its study once the budget is in, the other joins it on
the announced dataset version, the run registers one version whose trials are the study's, and an
announcement of a finished study or of another spec is passed over without downloading anything."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import optuna

from cascade.events import StudyOpened
from cascade.services.trainer.core import TrainerCore
from cascade.services.trainer.settings import TrainerSettings
from cascade.training_spec import TrainingSpec
from tests.trainer.test_core_with_fakes import DATASET, FakeDatasets, FakeRegistry, arrived

SPEC = TrainingSpec(strategy="random", estimators=["logistic_regression", "random_forest"], max_trials=6)


async def _nothing(event: object) -> None:
    return None


def _settings(tmp_path: Path) -> TrainerSettings:
    return TrainerSettings(
        study_storage_url=f"sqlite:///{tmp_path / 'studies.db'}",
        study_heartbeat_seconds=1,
        study_grace_seconds=10,
        attribution_max_evaluations=1,
    )


async def test_the_owner_announces_its_study_and_another_replica_joins_it(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    owner_data, joiner_data, registry = FakeDatasets(), FakeDatasets(), FakeRegistry(spec=SPEC)
    announced: list[StudyOpened] = []
    joined: list[asyncio.Task[None]] = []
    joiner = TrainerCore(settings, joiner_data, registry, _nothing, worker="replica-b")

    async def announce(event: StudyOpened) -> None:
        announced.append(event)
        joined.append(asyncio.create_task(joiner.on_study_opened(event)))

    owner = TrainerCore(settings, owner_data, registry, _nothing, announce=announce, worker="replica-a")
    await owner.on_data_arrived(arrived("v2"))
    await asyncio.gather(*joined)

    [opened] = announced
    assert (opened.model, opened.dataset, opened.dataset_version) == (DATASET, DATASET, "v2")
    assert opened.owner == "replica-a" and opened.spec_digest == SPEC.digest()
    assert joiner_data.downloads == [(DATASET, "v2", 0)]  # the joiner trained on the announced version
    study = optuna.load_study(study_name=opened.study, storage=settings.study_storage_url)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == SPEC.max_trials
    [created] = registry.created
    assert len(json.loads(created["tags"]["trials"])) == SPEC.max_trials  # every replica's trials

    # Read again later (a replica's new group starts from the earliest offset): nothing to join.
    late = TrainerCore(settings, FakeDatasets(), registry, _nothing, worker="replica-c")
    await late.on_study_opened(opened)
    assert late.ingest.downloads == []  # type: ignore[attr-defined]
    # Its own announcement is not for the owner.
    await owner.on_study_opened(opened)
    assert owner_data.downloads == [(DATASET, "v2", 0)]


async def test_a_study_opened_with_another_spec_is_not_joined(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    registry = FakeRegistry(spec=SPEC)
    opened = StudyOpened(
        source="test",
        subject=DATASET,
        model=DATASET,
        study="cascade-x",
        run_key="v2:other",
        dataset=DATASET,
        dataset_version="v2",
        task="classification",
        spec_digest="not-this-spec",
        owner="replica-a",
    )
    storage = settings.study_storage()
    assert storage is not None
    study = optuna.create_study(study_name="cascade-x", storage=storage.open())
    study.enqueue_trial({})
    datasets = FakeDatasets()
    await TrainerCore(settings, datasets, registry, _nothing, worker="replica-b").on_study_opened(opened)
    assert datasets.downloads == []
