"""The trainer's domain: one *data arrived* becomes one registered, ONNX-verified model version.

A retrain happens only when it can learn something: a drift event whose monitor found no new data
(or whose model's dataset has no version newer than the champion's) trains nothing, and a run whose
artifact is byte-identical to the champion's registers no version: the run is recorded as a tag on
the champion instead, and nothing goes to validation."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
from prometheus_client import Counter, Histogram

from cascade.client.records import DatasetVersion, ModelVersion, StoredTrainingSpec, TrainingRun
from cascade.errors import InvalidArgument, NotFound
from cascade.events import (
    DataArrived,
    DriftDetected,
    ModelTrained,
    RetrainCause,
    StudyOpened,
    TrainingProgress,
    TrainingRequested,
)
from cascade.names import check_name
from cascade.services.trainer.attribution import (
    BACKGROUND_TAG,
    GLOBAL_ATTRIBUTION_TAG,
    background_record,
    background_sample,
    global_attribution_record,
)
from cascade.services.trainer.distributed import SharedStudy, is_open, study_name
from cascade.services.trainer.importing import (
    ImportedModel,
    ModelFormat,
    convert_and_check,
    parity_rows_from_csv,
)
from cascade.services.trainer.out_of_core import OUT_OF_CORE_TAG, out_of_core_families, train_out_of_core
from cascade.services.trainer.settings import TrainerSettings
from cascade.services.trainer.training import TrainingResult, join_study, train
from cascade.splits import holdout_mask
from cascade.training_spec import Task, TrainingSpec

log = logging.getLogger(__name__)

SOURCE = "cascade/trainer"
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # this replica, on the trials it claims in a shared study
RUNS = Counter("cascade_trainer_runs_total", "Training runs, by outcome.", ["model", "outcome"])
TRIALS = Counter("cascade_trainer_trials_total", "Hyperparameter trials run.", ["model"])
TRAIN_SECONDS = Histogram("cascade_trainer_train_seconds", "Wall time of one training run.")

Emit = Callable[[ModelTrained], Awaitable[None]]
Progress = Callable[[TrainingProgress], Awaitable[None]]
Announce = Callable[[StudyOpened], Awaitable[None]]


class Datasets(Protocol):
    """What the trainer asks of ingest (cascade.client.ingest.IngestClient is one)."""

    async def get_dataset_version(self, dataset: str, version: str = "") -> DatasetVersion: ...

    async def download_dataset(
        self, dataset: str, version: str = "", *, row_start: int = 0, row_end: int = 0, last_batches: int = 0
    ) -> tuple[DatasetVersion, pd.DataFrame]: ...

    async def download_dataset_to_file(
        self, dataset: str, version: str, path: Path, *, last_batches: int = 0
    ) -> int: ...


class Registry(Protocol):
    """What the trainer asks of the registry (cascade.client.registry.RegistryClient is one)."""

    async def get_training_spec(self, model: str, version: int = 0) -> StoredTrainingSpec: ...

    async def get_version(
        self,
        model: str,
        version: int | None = None,
        *,
        alias: str | None = None,
        idempotency_key: str | None = None,
    ) -> ModelVersion: ...

    async def list_versions(self, model: str, dataset_version: str = "") -> list[ModelVersion]: ...

    async def update_version(
        self,
        model: str,
        version: int,
        *,
        description: str | None = None,
        set_tags: Mapping[str, str] | None = None,
        delete_tags: Sequence[str] = (),
    ) -> ModelVersion: ...

    async def create_version(
        self,
        model: str,
        artifact: bytes,
        *,
        dataset: str = "",
        dataset_version: str = "",
        run: TrainingRun | None = None,
        idempotency_key: str = "",
        tags: Mapping[str, str] | None = None,
        description: str = "",
    ) -> ModelVersion: ...


@dataclass(frozen=True)
class _NewVersion:
    """A version to register: everything but its artifact."""

    model: str
    dataset: str
    dataset_version: str
    run: TrainingRun
    idempotency_key: str
    tags: dict[str, str]
    description: str


@dataclass(frozen=True)
class _Job:
    """What one training run is about: a dataset version, and why (None: new data arrived)."""

    dataset: str
    dataset_version: str
    task: Literal["classification", "regression"]
    cause: RetrainCause | None = None


@dataclass(frozen=True)
class ImportRequest:
    """A model trained elsewhere, as ImportModel's header describes it (see importing.py)."""

    model: str
    model_format: ModelFormat
    features: tuple[str, ...] = ()
    task: str = ""  # empty: the reference dataset's
    dataset: str = ""  # empty: no reference, unmonitored
    dataset_version: str = ""  # empty: the latest
    parity_rows_csv: bytes = b""
    actor: str = ""
    reason: str = ""


@dataclass(frozen=True)
class ImportOutcome:
    model_version: int
    parity_max_difference: float
    parity_rows: int
    monitored: bool


class TrainerCore:
    def __init__(
        self,
        settings: TrainerSettings,
        ingest: Datasets,
        registry: Registry,
        emit: Emit,
        progress: Progress | None = None,
        announce: Announce | None = None,
        worker: str = WORKER,
    ) -> None:
        self.settings = settings
        self.ingest = ingest
        self.registry = registry
        self.emit = emit
        self.progress = progress
        self.announce = announce  # with study storage set: invites the other replicas to a study
        self.worker = worker

    async def spec_for(self, model: str) -> TrainingSpec:
        """The model's latest spec in the registry, or the defaults (with this trainer's seed, folds
        and hold-out) when it has none: a new dataset trains with no spec at all."""
        try:
            stored = await self.registry.get_training_spec(model)
        except NotFound:
            return TrainingSpec(
                seed=self.settings.seed,
                cv_folds=self.settings.cv_folds,
                holdout_fraction=self.settings.holdout_fraction,
            )
        return TrainingSpec.model_validate_json(stored.spec_json)

    async def on_data_arrived(self, event: DataArrived) -> None:
        """Train on the announced version, once: a redelivered event finds its version already
        registered (by idempotency key) and only announces it again. Triggers that queued up while
        the model was training coalesce: an event whose version is no longer the dataset's latest is
        skipped, since the event of the latest version (which contains its rows) trains next."""
        latest = await self._latest_dataset_version(event.dataset)
        if latest != event.dataset_version:
            log.info(
                "%s@%s superseded by %s; coalesced into that run",
                event.dataset,
                event.dataset_version[:12],
                latest[:12],
            )
            return
        spec = await self.spec_for(event.dataset)
        job = _Job(event.dataset, event.dataset_version, event.task)
        await self._run(event.dataset, job, f"{event.dataset_version}:{spec.digest()}", spec)

    async def on_training_requested(self, event: TrainingRequested) -> None:
        """A retrain asked for by hand, on the model's dataset's newest version."""
        dataset = await self._dataset_of(event.model)
        latest = await self._latest_dataset_version(dataset)
        task = await self._task_of(dataset)
        cause = RetrainCause(
            kind="manual",
            event_id=event.id,
            summary=f"requested by {event.actor}: {event.reason}".rstrip(": "),
        )
        spec = await self.spec_for(event.model)
        job = _Job(dataset, latest, task, cause)
        await self._run(event.model, job, f"{latest}:{spec.digest()}:manual:{event.id}", spec)

    async def on_drift_detected(self, event: DriftDetected) -> None:
        """Retrain the drifting model on its dataset's newest version, if that is newer than the
        champion's: retraining on the data the champion learned from only makes the same model.
        Labelled production rows come as a feedback batch, whose *data arrived* trains, so a
        "feedback" event trains nothing here. The drift event's id is part of the idempotency key, so
        a redelivered event does not train twice. Storms are the monitor's to stop (its cooldown and
        hysteresis decide when to emit)."""
        if event.action != "retrain":
            log.info(
                "%s: %s on v%s, action %s: nothing to train here",
                event.model,
                event.kind,
                event.model_version,
                event.action,
            )
            RUNS.labels(event.model, f"not_run_{event.action}").inc()
            return
        champion = await self.registry.get_version(event.model, event.model_version)
        latest = await self._latest_dataset_version(champion.dataset)
        if latest == champion.dataset_version:
            log.warning(
                "%s: %s detected on v%d, but %s@%s is still the latest version: "
                "no new data to learn from, not retraining",
                event.model,
                event.kind,
                event.model_version,
                champion.dataset,
                latest[:12],
            )
            RUNS.labels(event.model, "not_run_no_new_data").inc()
            return
        cause = RetrainCause(kind=event.kind, event_id=event.id, summary=event.summary, report=event.report)
        task: Literal["classification", "regression"] = (
            "regression" if champion.tags.get("task") == "regression" else "classification"
        )
        job = _Job(champion.dataset, latest, task, cause)
        log.info(
            "%s: %s detected on v%d (%s); retraining on %s@%s",
            event.model,
            event.kind,
            event.model_version,
            event.summary,
            champion.dataset,
            latest[:12],
        )
        spec = await self.spec_for(event.model)
        await self._run(event.model, job, f"{latest}:{spec.digest()}:{event.kind}:{event.id}", spec)

    async def _run(self, model: str, job: _Job, key: str, spec: TrainingSpec) -> None:
        existing = await self._registered(model, key)
        if existing is None:
            existing = await self._train_and_register(job, model, key, spec)
            if existing is None:  # the champion again, byte for byte: nothing new to validate
                return
        else:
            log.info("%s@%s already trained as v%d", model, job.dataset_version[:12], existing.version)
        await self.emit(
            ModelTrained(
                id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"cascade:model-trained:{model}:{existing.version}")),
                source=SOURCE,
                subject=model,
                model=model,
                model_version=existing.version,
                dataset=job.dataset,
                dataset_version=job.dataset_version,
                training_run=existing.run.run_id,
                metrics=dict(existing.run.metrics),
                train_seconds=existing.run.train_seconds,
                cause=job.cause,
            )
        )

    async def _dataset_of(self, model: str) -> str:
        """The dataset a model is trained on: its latest version's, or (new model) its own name."""
        versions = await self.registry.list_versions(model)
        return versions[-1].dataset if versions else model

    async def _task_of(self, dataset: str) -> Literal["classification", "regression"]:
        info = await self.ingest.get_dataset_version(dataset)
        return "regression" if info.task == "regression" else "classification"

    async def _latest_dataset_version(self, dataset: str) -> str:
        return (await self.ingest.get_dataset_version(dataset)).version

    async def _registered(self, model: str, key: str) -> ModelVersion | None:
        try:
            return await self.registry.get_version(model, idempotency_key=key)
        except NotFound:
            return None

    async def _train_and_register(
        self, job: _Job, model: str, key: str, spec: TrainingSpec
    ) -> ModelVersion | None:
        described = await self.ingest.get_dataset_version(job.dataset, job.dataset_version)
        if described.rows > self.settings.out_of_core_rows:
            fitting = self._fit_out_of_core(described, job, model, key, spec)
        else:
            fitting = self._fit_in_memory(job, model, key, spec)
        try:
            with TRAIN_SECONDS.time():
                info, result = await fitting
        except Exception as exc:
            RUNS.labels(model, "failed").inc()
            await self._report(model, key, "failed", message=str(exc))
            raise
        features, target = list(info.features), info.target
        RUNS.labels(model, "succeeded").inc()
        TRIALS.labels(model).inc(len(result.trials))
        run_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"cascade:run:{model}:{key}"))
        champion = await self._champion_with_artifact(model, result.onnx_bytes)
        if champion is not None:
            await self._record_on(champion, key, run_id, job, result)
            await self._report(
                model,
                key,
                "finished",
                model_version=champion.version,
                message=f"the artifact is the champion v{champion.version}'s, byte for byte: "
                "no new version; the run is recorded on it",
            )
            return None
        version = await self._upload(
            _training_header(model, key, run_id, job, features, target, result, spec), result.onnx_bytes
        )
        log.info(
            "registered %s v%d: %s in %.2fs", model, version.version, result.metrics, result.train_seconds
        )
        await self._report(
            model,
            key,
            "finished",
            model_version=version.version,
            best_score=max((t["score"] for t in result.trials if t["score"] is not None), default=None),
            message=f"registered version {version.version}: {result.metrics}",
        )
        return version

    def _trial_reporter(self, model: str, key: str) -> Callable[[dict[str, Any]], None]:
        loop = asyncio.get_running_loop()

        def on_trial(trial: dict[str, Any]) -> None:  # called from the training thread
            asyncio.run_coroutine_threadsafe(self._report(model, key, "trial", **trial), loop)

        return on_trial

    async def _fit_in_memory(
        self, job: _Job, model: str, key: str, spec: TrainingSpec
    ) -> tuple[DatasetVersion, TrainingResult]:
        """The version (or its window) as one frame, searched with cross-validation."""
        info, frame = await self.ingest.download_dataset(
            job.dataset, job.dataset_version, last_batches=spec.window_batches or 0
        )
        window = f"latest {spec.window_batches} batches" if spec.window_batches else "all rows"
        log.info(
            "training %s on %s@%s (%d rows, %s)", model, job.dataset, info.version[:12], len(frame), window
        )
        await self._report(
            model,
            key,
            "started",
            max_trials=spec.max_trials,
            message=f"{len(frame)} rows ({window}), {spec.strategy} search",
        )
        result = await asyncio.to_thread(
            train,
            frame,
            list(info.features),
            info.target,
            job.task,
            spec=spec,
            on_trial=self._trial_reporter(model, key),
            explain=self.settings.explain_limits(),
            shared=self._shared_study(model, key, job, spec),
        )
        return info, result

    async def _fit_out_of_core(
        self, info: DatasetVersion, job: _Job, model: str, key: str, spec: TrainingSpec
    ) -> tuple[DatasetVersion, TrainingResult]:
        """A version over out_of_core_rows: its Parquet file streamed into a spool file in the data
        dir, then read segment by segment by the families that can learn that way (out_of_core.py).
        Not a shared study: its candidates are few and each is a pass over the file."""
        families = out_of_core_families(spec.resolved(spec.task or job.task))
        window = f"latest {spec.window_batches} batches" if spec.window_batches else "all rows"
        message = (
            f"{info.rows} rows in the version, over {self.settings.out_of_core_rows}: out of core "
            f"({window}), segment by segment, families {', '.join(families) or 'none that can'}"
        )
        log.info("training %s on %s@%s: %s", model, job.dataset, info.version[:12], message)
        await self._report(model, key, "started", max_trials=spec.max_trials, message=message)
        spool_dir = self.settings.data_dir / "spool"
        await asyncio.to_thread(spool_dir.mkdir, parents=True, exist_ok=True)
        spool = spool_dir / f"{uuid.uuid4().hex}.parquet"
        try:
            size = await self.ingest.download_dataset_to_file(
                job.dataset, info.version, spool, last_batches=spec.window_batches or 0
            )
            log.info("spooled %s@%s: %d bytes", job.dataset, info.version[:12], size)
            result = await asyncio.to_thread(
                train_out_of_core,
                spool,
                list(info.features),
                info.target,
                job.task,
                spec,
                self._trial_reporter(model, key),
                self.settings.explain_limits(),
            )
        finally:
            await asyncio.to_thread(spool.unlink, missing_ok=True)
        return info, result

    def _shared_study(self, model: str, key: str, job: _Job, spec: TrainingSpec) -> SharedStudy | None:
        """With study storage set, the run's search is a study other replicas join once it is
        announced, named after the run's idempotency key: a redelivered event resumes it rather than
        starting again."""
        storage = self.settings.study_storage()
        if storage is None or self.announce is None:
            return None
        name = study_name(model, key)
        opened = StudyOpened(
            source=SOURCE,
            subject=model,
            model=model,
            study=name,
            run_key=key,
            dataset=job.dataset,
            dataset_version=job.dataset_version,
            task=job.task,
            window_batches=spec.window_batches,
            spec_digest=spec.digest(),
            owner=self.worker,
        )
        loop, announce = asyncio.get_running_loop(), self.announce

        async def invite() -> None:
            try:
                await announce(opened)
            except Exception as exc:  # an invitation lost only slows the study: the owner runs it all
                log.warning("could not announce study %s: %s", name, exc)

        def on_open() -> None:  # from the training thread
            asyncio.run_coroutine_threadsafe(invite(), loop)

        return SharedStudy(storage, name, worker=self.worker, on_open=on_open)

    async def on_study_opened(self, event: StudyOpened) -> None:
        """Join another replica's study: the same dataset version (and window) and spec, trials until
        its budget is spent. An announcement of a study that is done (an old one read again) or of a
        spec that has changed since is passed over."""
        storage = self.settings.study_storage()
        if event.owner == self.worker or storage is None or event.dataset_version is None:
            return
        if not await asyncio.to_thread(is_open, storage, event.study):
            log.info("study %s of %s has no trial waiting; not joining", event.study, event.model)
            return
        spec = await self.spec_for(event.model)
        if spec.digest() != event.spec_digest:
            log.warning("study %s of %s was opened with another spec; not joining", event.study, event.model)
            return
        info, frame = await self.ingest.download_dataset(
            event.dataset, event.dataset_version, last_batches=event.window_batches or 0
        )
        shared = SharedStudy(storage, event.study, worker=self.worker, owner=False)
        ran = await asyncio.to_thread(
            join_study, frame, list(info.features), info.target, event.task, spec, shared
        )
        TRIALS.labels(event.model).inc(ran)
        log.info("ran %d trials of %s's study %s (owner %s)", ran, event.model, event.study, event.owner)

    async def _champion_with_artifact(self, model: str, onnx_bytes: bytes) -> ModelVersion | None:
        """The champion, if its artifact has the same sha256 as `onnx_bytes`."""
        digest = await asyncio.to_thread(lambda: hashlib.sha256(onnx_bytes).hexdigest())
        try:
            champion = await self.registry.get_version(model, alias="champion")
        except NotFound:
            return None  # a first version, or no champion yet
        return champion if champion.artifact_sha256 == digest else None

    async def _record_on(
        self, version: ModelVersion, key: str, run_id: str, job: _Job, result: TrainingResult
    ) -> None:
        """Keep the run beside the version it reproduced, as a tag (the same run twice: one tag)."""
        record = {
            "run_id": run_id,
            "idempotency_key": key,
            "dataset": job.dataset,
            "dataset_version": job.dataset_version,
            "metrics": result.metrics,
            "train_seconds": result.train_seconds,
            "cause": job.cause.model_dump(mode="json") if job.cause else None,
        }
        await self.registry.update_version(
            version.model, version.version, set_tags={f"rerun:{run_id}": json.dumps(record)}
        )
        RUNS.labels(version.model, "unchanged").inc()
        log.info(
            "%s: the run reproduced v%d byte for byte; recorded on it, no new version",
            version.model,
            version.version,
        )

    async def _report(self, model: str, key: str, stage: str, **fields: Any) -> None:
        """Progress is for people watching: it must never fail a run."""
        if self.progress is None:
            return
        try:
            event = TrainingProgress(
                source=SOURCE, subject=model, model=model, run_key=key, stage=stage, **fields
            )
            await self.progress(event)
        except Exception as exc:
            log.warning("could not publish training progress: %s", exc)

    async def _upload(self, new: _NewVersion, onnx_bytes: bytes) -> ModelVersion:
        return await self.registry.create_version(
            new.model,
            onnx_bytes,
            dataset=new.dataset,
            dataset_version=new.dataset_version,
            run=new.run,
            idempotency_key=new.idempotency_key,
            tags=new.tags,
            description=new.description,
        )

    async def import_model(self, request: ImportRequest, data: bytes) -> ImportOutcome:
        """Register a model trained elsewhere: convert it to ONNX, prove the conversion on the
        reference dataset's held-out rows (or the caller's parity rows), upload it tagged as
        imported and, with a reference dataset, announce it so the validator gates it against the
        champion and, once promoted, the monitor follows it. The same file and reference twice
        register one version."""
        check_name("model", request.model)
        features, task, target = list(request.features), request.task, ""
        dataset, dataset_version = request.dataset, ""
        training_rows: np.ndarray | None = None  # the reference's, for the explanation background
        if dataset:
            info, frame = await self.ingest.download_dataset(dataset, request.dataset_version)
            dataset_version, target = info.version, info.target
            features = features or list(info.features)
            task = task or ("regression" if info.task == "regression" else "classification")
            missing = [f for f in features if f not in frame.columns]
            if missing:
                raise InvalidArgument(f"{dataset}@{info.version[:12]} has no columns {missing[:5]}")
            mask = holdout_mask(frame[[*features, target]], self.settings.holdout_fraction)
            held_out = frame[mask]
            rows = (held_out if len(held_out) else frame)[features].to_numpy(dtype=np.float32)
            learned = frame[~mask] if (~mask).any() else frame
            training_rows = learned[features].to_numpy(dtype=np.float32)
        else:
            if not features:
                raise InvalidArgument("features are required without a reference dataset")
            if not request.parity_rows_csv:
                raise InvalidArgument("parity rows are required without a reference dataset")
            rows = await asyncio.to_thread(parity_rows_from_csv, request.parity_rows_csv, features)
        if task not in ("classification", "regression"):
            raise InvalidArgument(f"task must be classification or regression, not {task!r}")
        checked_task: Task = "regression" if task == "regression" else "classification"
        if len(set(features)) != len(features):
            raise InvalidArgument("features repeat a name")
        imported = await asyncio.to_thread(
            convert_and_check,
            data,
            request.model_format,
            features,
            checked_task,
            rows,
            self.settings.allow_pickle_import,
        )
        digest = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        key = f"import:{digest}:{dataset}@{dataset_version}"
        run_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"cascade:run:{request.model}:{key}"))
        version = await self._registered(request.model, key)
        if version is None:
            explain_tags = (
                await asyncio.to_thread(
                    _explain_tags, imported.onnx_bytes, features, training_rows, rows, self.settings
                )
                if training_rows is not None
                else {}
            )
            header = _import_header(
                request, key, run_id, features, task, target, dataset_version, imported, explain_tags
            )
            version = await self._upload(header, imported.onnx_bytes)
            RUNS.labels(request.model, "imported").inc()
            log.info(
                "imported %s v%d (%s, parity %.2e on %d rows, %s)",
                request.model,
                version.version,
                request.model_format,
                imported.parity_max_difference,
                imported.parity_rows,
                f"reference {dataset}@{dataset_version[:12]}" if dataset else "unmonitored",
            )
        if dataset:
            await self.emit(
                ModelTrained(
                    id=str(
                        uuid.uuid5(
                            uuid.NAMESPACE_URL, f"cascade:model-trained:{request.model}:{version.version}"
                        )
                    ),
                    source=SOURCE,
                    subject=request.model,
                    model=request.model,
                    model_version=version.version,
                    dataset=dataset,
                    dataset_version=dataset_version,
                    training_run=run_id,
                )
            )
        return ImportOutcome(
            version.version, imported.parity_max_difference, imported.parity_rows, bool(dataset)
        )


def _training_header(
    model: str,
    key: str,
    run_id: str,
    job: _Job,
    features: list[str],
    target: str,
    result: TrainingResult,
    spec: TrainingSpec,
) -> _NewVersion:
    return _NewVersion(
        model=model,
        dataset=job.dataset,
        dataset_version=job.dataset_version,
        idempotency_key=key,
        run=TrainingRun(
            run_id=run_id,
            params=result.params,
            metrics=result.metrics,
            seed=spec.seed,
            train_seconds=result.train_seconds,
            code_version=result.versions.get("cascade", ""),
        ),
        tags=_tags(features, target, job, spec, result),
        description=f"trained on {job.dataset}@{job.dataset_version[:12]}"
        + (f" because {job.cause.kind} was detected: {job.cause.summary}" if job.cause else ""),
    )


def _import_header(
    request: ImportRequest,
    key: str,
    run_id: str,
    features: list[str],
    task: str,
    target: str,
    dataset_version: str,
    imported: ImportedModel,
    explain_tags: Mapping[str, str],
) -> _NewVersion:
    """An imported version carries the tags the validator, serving and the monitor read from a
    trained one (features, task, target, parity reference, explanation background), and says where
    it came from."""
    monitored = bool(request.dataset)
    tags = {
        "source": "imported",
        "format": request.model_format,
        "monitoring": "monitored" if monitored else "unmonitored",
        "features": json.dumps(features),
        "task": task,
        "library_versions": json.dumps(imported.versions),
        "parity_reference": json.dumps(imported.parity_reference),
        "import_parity": json.dumps(
            {"max_difference": imported.parity_max_difference, "rows": imported.parity_rows}
        ),
        **explain_tags,
    }
    if target:
        tags["target"] = target
    reason = f": {request.reason}" if request.reason else ""
    where = (
        f"reference {request.dataset}@{dataset_version[:12]}" if monitored else "no reference, unmonitored"
    )
    return _NewVersion(
        model=request.model,
        dataset=request.dataset,
        dataset_version=dataset_version,
        idempotency_key=key,
        run=TrainingRun(
            run_id=run_id,
            params={"source": "imported", "format": request.model_format},
            metrics={},
            seed=0,
            train_seconds=0.0,
            code_version="",
        ),
        tags=tags,
        description=f"imported from a {request.model_format} file by {request.actor or 'unknown'} "
        f"({where}){reason}",
    )


def _explain_tags(
    onnx_bytes: bytes,
    features: list[str],
    training_rows: np.ndarray,
    held_out: np.ndarray,
    settings: TrainerSettings,
) -> dict[str, str]:
    """An imported version's explanation background, sampled from its reference dataset's training
    rows, and its global attribution on the held-out rows when that fits the trainer's limits."""
    limits = settings.explain_limits()
    background = background_sample(training_rows, limits.background_rows, settings.seed)
    tags = {BACKGROUND_TAG: background_record(features, background)}
    attribution = global_attribution_record(onnx_bytes, background, features, held_out, limits, settings.seed)
    if attribution is not None:
        tags[GLOBAL_ATTRIBUTION_TAG] = attribution
    return tags


def _tags(
    features: list[str], target: str, job: _Job, spec: TrainingSpec, result: TrainingResult
) -> dict[str, str]:
    """The run's record beside the model: its spec, every trial, importances, durations, versions."""
    tags = {
        "features": json.dumps(features),
        "target": target,
        "task": job.task,
        "spec": spec.model_dump_json(),
        "trials": json.dumps(result.trials),
        "feature_importance": json.dumps(result.feature_importance),
        "durations": json.dumps(result.durations),
        "library_versions": json.dumps(result.versions),
        "parity_reference": json.dumps(result.parity_reference),
        **result.explain_tags,
    }
    if result.out_of_core:
        tags[OUT_OF_CORE_TAG] = result.out_of_core
    if job.cause is not None:  # the registry keeps why this version exists, with the report
        tags["cause"] = job.cause.model_dump_json()
    return tags
