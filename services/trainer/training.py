"""Training, transport-free: search pipelines within a budget, refit the best, export it to ONNX and
prove the export predicts the same."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
import optuna
import pandas as pd
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.base import BaseEstimator
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.inspection import permutation_importance
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.metrics import get_scorer
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from cascade.errors import CascadeError, FailedPrecondition, InvalidArgument
from cascade.services.trainer.attribution import ExplainLimits, explain_tags
from cascade.services.trainer.boosting import (
    IMPORT_EXTRA,
    boosting_estimator,
    boosting_to_onnx,
    is_boosting,
    missing_library,
)
from cascade.services.trainer.distributed import (
    SharedStudy,
    fill_slots,
    open_study,
    wait_for_running,
    wait_for_slots,
    work_on,
)
from cascade.splits import holdout_mask
from cascade.training_spec import BOOSTING, DEFAULT_ESTIMATORS, ParamRange, Task, TrainingSpec

log = logging.getLogger(__name__)

INPUT_NAME = "input"
PARITY_REFERENCE_ROWS = 16
PROBABILITY_TOLERANCE = 1e-4  # absolute for probabilities; relative to the magnitude for regression values
STARTUP_TRIALS = 4  # the Bayesian search's random trials before TPE proposes
TRIAL_RECORD = "cascade.trial"  # a shared study's trials carry their record (user attribute)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # Cascade logs each trial itself

# Told about each finished trial (number, estimator, state, score, best so far), from the training thread.
OnTrial = Callable[[dict[str, Any]], None]


@dataclass
class TrainingResult:
    onnx_bytes: bytes
    params: dict[str, str]
    metrics: dict[str, float]
    trials: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    feature_importance: dict[str, float] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    # A few held-out rows and scikit-learn's outputs for them, so the validator can recheck that the
    # artifact it is about to promote still reproduces them.
    parity_reference: dict[str, list[list[float]]] = field(default_factory=dict)
    # The `explain_background` and (when the model could be explained in budget) `global_attribution`
    # tags, as JSON (services/trainer/attribution.py).
    explain_tags: dict[str, str] = field(default_factory=dict)
    # How a version too large for memory was fitted (out_of_core.py); empty: the whole frame in memory.
    out_of_core: str = ""


def _estimator(name: str, task: Task, params: dict[str, Any], seed: int) -> BaseEstimator:
    classify = task == "classification"
    if name in BOOSTING:
        estimator: BaseEstimator = boosting_estimator(name, task, params, seed)
        return estimator
    if name == "logistic_regression":
        return LogisticRegression(max_iter=2000, **params)
    if name == "ridge":
        return Ridge(**params)
    if name == "linear_regression":
        return LinearRegression(**params)
    if name == "random_forest":
        forest = RandomForestClassifier if classify else RandomForestRegressor
        return forest(random_state=seed, n_jobs=1, **params)
    if name == "gradient_boosting":
        boosting = GradientBoostingClassifier if classify else GradientBoostingRegressor
        return boosting(random_state=seed, **params)
    raise InvalidArgument(f"unknown estimator {name!r}")


_TREES = frozenset({"random_forest", "gradient_boosting", *BOOSTING})


def build_pipeline(name: str, task: Task, params: dict[str, Any], seed: int) -> Pipeline:
    """Linear models get a scaler. Trees are scale-invariant and get none, and must not: ONNX scales
    by a reciprocal where scikit-learn divides, and the last-bit difference flips split decisions."""
    model = _estimator(name, task, params, seed)
    if name in _TREES:
        return Pipeline([("model", model)])
    return Pipeline([("scale", StandardScaler()), ("model", model)])


def trainable_families(spec: TrainingSpec, task: Task, labels: np.ndarray | None) -> TrainingSpec:
    """The spec with the families this trainer can train on these labels (classification's, else
    None). A default search leaves out the boosting families whose library is not installed, and,
    for classes other than 0..n-1 (XGBoost takes no others, and LightGBM's export answers class
    indices), both; a spec that names one of them is refused with the reason."""
    indexed = labels is None or np.array_equal(np.unique(labels), np.arange(len(np.unique(labels))))
    if spec.estimators is None:
        defaults = DEFAULT_ESTIMATORS[task]
        usable = [e for e in defaults if e not in BOOSTING or (indexed and missing_library(e) is None)]
        return spec.model_copy(update={"estimators": usable})
    missing = {name: missing_library(name) for name in spec.estimators}
    absent = [f"{name} (needs {module})" for name, module in missing.items() if module is not None]
    if absent:
        raise FailedPrecondition(
            f"the spec asks for {', '.join(absent)}, not installed on this trainer: install {IMPORT_EXTRA}"
        )
    boosting = [name for name in spec.estimators if name in BOOSTING]
    if boosting and not indexed:
        assert labels is not None
        raise InvalidArgument(
            f"{' and '.join(boosting)} need class labels 0..n-1; the target holds "
            f"{np.unique(labels)[:10].tolist()}"
        )
    return spec


def _suggest(trial: optuna.Trial, name: str, space: dict[str, ParamRange]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for param, bounds in space.items():
        key = f"{name}.{param}"
        if bounds.choices is not None:
            params[param] = trial.suggest_categorical(key, bounds.choices)
        elif bounds.integer:
            assert bounds.low is not None and bounds.high is not None
            params[param] = trial.suggest_int(key, int(bounds.low), int(bounds.high), log=bounds.log)
        else:
            assert bounds.low is not None and bounds.high is not None
            params[param] = trial.suggest_float(key, bounds.low, bounds.high, log=bounds.log)
    return params


def _grid(spec: TrainingSpec) -> list[dict[str, Any]]:
    """Every grid point of every family, as enqueued trial parameters."""
    import itertools

    points: list[dict[str, Any]] = []
    assert spec.estimators is not None
    for name in spec.estimators:
        space = spec.search_space[name]
        values = [bounds.grid() for bounds in space.values()]
        for combination in itertools.product(*values):
            points.append(
                {"estimator": name, **{f"{name}.{p}": v for p, v in zip(space, combination, strict=True)}}
            )
    return points


class _Search:
    """One hyperparameter search: an Optuna study whose trials are scored by cross-validation, fold by
    fold, so the median pruner stops weak trials early."""

    def __init__(
        self,
        spec: TrainingSpec,
        x: np.ndarray,
        y: np.ndarray,
        on_trial: OnTrial | None = None,
        shared: SharedStudy | None = None,
    ) -> None:
        self.spec = spec
        self.on_trial = on_trial
        self.shared = shared
        self.x, self.y = x, y
        assert spec.task is not None and spec.primary_metric is not None
        self.task: Task = spec.task
        self.scorer = get_scorer(spec.primary_metric)
        splitter = StratifiedKFold if self.task == "classification" else KFold
        self.folds = list(splitter(spec.cv_folds, shuffle=True, random_state=spec.seed).split(x, y))
        self.trials: list[dict[str, Any]] = []

    def objective(self, trial: optuna.Trial) -> float:
        assert self.spec.estimators is not None
        name = str(trial.suggest_categorical("estimator", self.spec.estimators))
        params = _suggest(trial, name, self.spec.search_space[name])
        started = time.perf_counter()
        scores: list[float] = []
        try:
            for step, (train_rows, test_rows) in enumerate(self.folds):
                model = build_pipeline(name, self.task, params, self.spec.seed)
                model.fit(self.x[train_rows], self.y[train_rows])
                scores.append(float(self.scorer(model, self.x[test_rows], self.y[test_rows])))
                trial.report(float(np.mean(scores)), step)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        finally:
            record = {
                "number": trial.number,
                "estimator": name,
                "params": {k: str(v) for k, v in params.items()},
                "score": float(np.mean(scores)) if scores else None,
                "folds_scored": len(scores),
                "pruned": len(scores) < len(self.folds),
                "seconds": round(time.perf_counter() - started, 4),
            }
            self.trials.append(record)
            if self.shared is not None:  # the owner reports every replica's trials from the study
                trial.set_user_attr(TRIAL_RECORD, record)
        return float(np.mean(scores))

    def run(self) -> optuna.Study:
        if self.shared is not None:
            return self._run_shared(self.shared)
        seed = self.spec.seed
        if self.spec.strategy == "bayesian":
            sampler: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=STARTUP_TRIALS
            )
        else:
            sampler = optuna.samplers.RandomSampler(seed=seed)
        study = optuna.create_study(direction="maximize", sampler=sampler, pruner=_pruner())
        n_trials = self.spec.max_trials
        if self.spec.strategy == "grid":
            grid = _grid(self.spec)
            for point in grid:
                study.enqueue_trial(point)
            n_trials = min(n_trials, len(grid))
        study.optimize(
            self.objective, n_trials=n_trials, timeout=self.spec.max_seconds, callbacks=[self._progress]
        )
        return study

    def _run_shared(self, shared: SharedStudy) -> optuna.Study:
        """The search as one participant of a study in shared storage (distributed.py): the owner
        puts the budget in as slots, everyone runs slots, the owner then waits for the others'."""
        storage = shared.storage.open()
        study = open_study(storage, shared.name, self._shared_sampler(shared.worker), _pruner())
        if shared.owner:
            added = fill_slots(study, self.spec.max_trials, self._fixed_points())
            log.info("study %s: %d trial slots added (budget %d)", shared.name, added, self.spec.max_trials)
            if shared.on_open is not None:
                shared.on_open()
        deadline = time.monotonic() + self.spec.max_seconds
        poll = shared.storage.poll_seconds
        if not shared.owner and not wait_for_slots(study, deadline, poll):
            log.warning(
                "study %s: no trial slots within %g s; nothing to join", shared.name, self.spec.max_seconds
            )
            return study
        ran = work_on(study, self.objective, deadline, shared.worker, self._progress, poll)
        log.info("study %s: %s ran %d trials", shared.name, shared.worker, ran)
        if shared.owner:
            still_running = wait_for_running(study, deadline + shared.storage.grace_seconds, poll)
            if still_running:
                log.warning(
                    "study %s: %d trials still running past the deadline; chosen without them",
                    shared.name,
                    len(still_running),
                )
        return study

    def _shared_sampler(self, worker: str) -> optuna.samplers.BaseSampler:
        """Grid and random trials are fixed in their slots, so who runs them does not matter. The
        Bayesian sampler proposes from the study's history, which depends on which replica asks
        when; each replica seeds it apart, or two with the same history would propose the same."""
        if self.spec.strategy != "bayesian":
            return optuna.samplers.RandomSampler(seed=self.spec.seed)
        offset = int.from_bytes(hashlib.sha256(worker.encode()).digest()[:4], "big")
        return optuna.samplers.TPESampler(seed=self.spec.seed + offset, n_startup_trials=STARTUP_TRIALS)

    def _fixed_points(self) -> list[dict[str, Any]]:
        """The parameters fixed in the slots: every grid point; the random search's trials, drawn from
        the spec's seed; the Bayesian search's random start-up trials."""
        if self.spec.strategy == "grid":
            return _grid(self.spec)
        count = self.spec.max_trials if self.spec.strategy == "random" else STARTUP_TRIALS
        draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=self.spec.seed))
        points: list[dict[str, Any]] = []
        assert self.spec.estimators is not None
        for _ in range(count):
            trial = draws.ask()
            name = str(trial.suggest_categorical("estimator", self.spec.estimators))
            _suggest(trial, name, self.spec.search_space[name])
            points.append(dict(trial.params))
            draws.tell(trial, 0.0)
        return points

    def _progress(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        best = f"{study.best_value:.4f}" if completed else "-"
        if self.on_trial is not None:
            self.on_trial(
                {
                    "trial": trial.number + 1,
                    "max_trials": self.spec.max_trials,
                    "estimator": str(trial.params.get("estimator")),
                    "state": trial.state.name.lower(),
                    "score": trial.value,
                    "best_score": study.best_value if completed else None,
                }
            )
        log.info(
            "trial %d/%d %s %s: %s (best %s)",
            trial.number + 1,
            self.spec.max_trials,
            trial.params.get("estimator"),
            trial.state.name.lower(),
            "-" if trial.value is None else f"{trial.value:.4f}",
            best,
        )


def _pruner() -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)


def study_trials(study: optuna.Study) -> list[dict[str, Any]]:
    """Every participant's trial records, in trial order, from a shared study."""
    records = [t.user_attrs.get(TRIAL_RECORD) for t in study.get_trials(deepcopy=False)]
    return [record for record in records if record is not None]


def train(
    frame: pd.DataFrame,
    features: list[str],
    target: str,
    task: Task,
    seed: int = 42,
    folds: int = 3,
    holdout: float = 0.2,
    spec: TrainingSpec | None = None,
    on_trial: OnTrial | None = None,
    explain: ExplainLimits | None = None,
    shared: SharedStudy | None = None,
) -> TrainingResult:
    """Search on the training rows within the spec's budget, refit the best pipeline, export it to
    ONNX and check on the held-out rows that ONNX and scikit-learn agree; then sample its
    explanation background from the training rows and attribute the exported ONNX's outputs on the
    held-out rows (within `explain`'s limits). With `shared` (its owner), the search is one study in
    shared storage that other replicas join (join_study)."""
    spec = TrainingSpec(seed=seed, cv_folds=folds, holdout_fraction=holdout) if spec is None else spec
    task = spec.task or task
    started = time.perf_counter()
    spec, x_train, y_train, holdout_rows = _training_rows(frame, features, target, task, spec)

    search = _Search(spec, x_train, y_train, on_trial, shared)
    study = search.run()
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise FailedPrecondition(f"no trial completed within {spec.max_seconds:g} s")
    searched = time.perf_counter()
    best_params = dict(study.best_params)
    name = str(best_params.pop("estimator"))
    params = {key.split(".", 1)[1]: value for key, value in best_params.items()}
    best = build_pipeline(name, task, params, spec.seed).fit(x_train, y_train)
    refitted = time.perf_counter()
    log.info(
        "best of %d trials: %s %s, cv %s %.4f",
        len(completed),
        name,
        params,
        spec.primary_metric,
        study.best_value,
    )

    onnx_bytes = export_onnx(best, len(features), task)
    x_holdout = holdout_rows[features].to_numpy(dtype=np.float32)
    y_holdout = holdout_rows[target].to_numpy()
    if task == "classification":
        y_holdout = y_holdout.astype(np.int64)
    check_parity(best, onnx_bytes, x_holdout, task)
    exported = time.perf_counter()

    scorer = get_scorer(spec.primary_metric or "accuracy")
    importance = permutation_importance(
        best, x_holdout, y_holdout, n_repeats=5, random_state=spec.seed, scoring=scorer
    )
    importance_done = time.perf_counter()
    tags = explain_tags(onnx_bytes, x_train, features, x_holdout, explain or ExplainLimits(), spec.seed)
    finished = time.perf_counter()
    metric = spec.primary_metric
    return TrainingResult(
        onnx_bytes=onnx_bytes,
        params={"estimator": name, **{k: str(v) for k, v in params.items()}},
        metrics={
            f"cv_{metric}": float(study.best_value),
            f"holdout_{metric}": float(scorer(best, x_holdout, y_holdout)),
        },
        trials=search.trials if shared is None else study_trials(study),
        train_seconds=finished - started,
        feature_importance={
            f: round(float(v), 6) for f, v in zip(features, importance.importances_mean, strict=True)
        },
        durations={
            "search": round(searched - started, 4),
            "refit": round(refitted - searched, 4),
            "export_and_parity": round(exported - refitted, 4),
            "importance": round(importance_done - exported, 4),
            "attribution": round(finished - importance_done, 4),
        },
        versions=training_versions(name),
        parity_reference=parity_reference(best, x_holdout, task),
        explain_tags=tags,
    )


def join_study(
    frame: pd.DataFrame,
    features: list[str],
    target: str,
    task: Task,
    spec: TrainingSpec,
    shared: SharedStudy,
    on_trial: OnTrial | None = None,
) -> int:
    """Take part in another replica's study: run its waiting trials on the same training rows (the
    same dataset version, hold-out and folds give the same rows everywhere) until none is left. The
    number of trials run here."""
    spec, x_train, y_train, _ = _training_rows(frame, features, target, spec.task or task, spec)
    search = _Search(spec, x_train, y_train, on_trial, replace(shared, owner=False))
    search.run()
    return len(search.trials)


def _training_rows(
    frame: pd.DataFrame, features: list[str], target: str, task: Task, spec: TrainingSpec
) -> tuple[TrainingSpec, np.ndarray, np.ndarray, pd.DataFrame]:
    """The resolved spec, the training rows' features and labels, and the held-out rows."""
    held_out = holdout_mask(frame[[*features, target]], spec.holdout_fraction)
    train_rows, holdout_rows = frame[~held_out], frame[held_out]
    if len(train_rows) < 4 * spec.cv_folds or len(holdout_rows) == 0:
        raise InvalidArgument(f"too few rows to train: {len(train_rows)} train, {len(holdout_rows)} held out")
    x_train = train_rows[features].to_numpy(dtype=np.float32)
    y_train = train_rows[target].to_numpy()
    if task == "classification":
        y_train = y_train.astype(np.int64)
        if len(np.unique(y_train)) < 2:
            raise InvalidArgument("classification needs at least two classes in the training rows")
    spec = trainable_families(spec, task, y_train if task == "classification" else None).resolved(task)
    return spec, x_train, y_train, holdout_rows


def training_versions(family: str) -> dict[str, str]:
    """The versions of the libraries that made (and export) a model of this family."""
    packages = ["scikit-learn", "skl2onnx", "onnxruntime", "numpy", "optuna"]
    if family in BOOSTING:
        packages += [family, "onnxmltools"]
    return {package: version(package) for package in packages}


def parity_reference(model: Predictor, rows: np.ndarray, task: Task) -> dict[str, list[list[float]]]:
    """A few rows and the original model's outputs for them, which the validator's parity gate
    checks the artifact against before promoting it."""
    reference_rows = rows[:PARITY_REFERENCE_ROWS]
    outputs = (
        model.predict_proba(reference_rows)
        if task == "classification"
        else np.asarray(model.predict(reference_rows)).reshape(-1, 1)
    )
    return {
        "rows": reference_rows.tolist(),
        "outputs": np.asarray(outputs).tolist(),
        "labels": [[float(v)] for v in np.asarray(model.predict(reference_rows)).ravel()],
    }


def export_onnx(pipeline: Pipeline, n_features: int, task: Task) -> bytes:
    """The pipeline as ONNX with one float input; classifiers expose a label and a probability tensor.
    XGBoost and LightGBM (alone in their pipeline: trees get no scaler) go through onnxmltools, as
    imported models of theirs do."""
    model = pipeline.steps[-1][1]
    if is_boosting(model):
        if len(pipeline.steps) > 1:
            raise InvalidArgument("a boosting model exports alone, with no preprocessing steps before it")
        return boosting_to_onnx(model, n_features, INPUT_NAME)
    onnx_model = to_onnx(
        pipeline,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        options={id(model): {"zipmap": False}} if task == "classification" else None,
        target_opset=17,
    )
    serialized: bytes = onnx_model.SerializeToString()
    return serialized


class Predictor(Protocol):
    """What a parity check compares ONNX against: a scikit-learn pipeline, or an imported model."""

    def predict(self, rows: np.ndarray) -> np.ndarray: ...
    def predict_proba(self, rows: np.ndarray) -> np.ndarray: ...


def check_parity(
    model: Predictor,
    onnx_bytes: bytes,
    rows: np.ndarray,
    task: Task,
    error: type[CascadeError] = FailedPrecondition,
) -> float:
    """ONNX must give the same labels on every row, and probabilities or values within 1e-4; the
    largest difference. A failure raises `error`: our own export failing is a precondition broken,
    an imported model failing is the caller's input."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {INPUT_NAME: rows})
    if task == "classification":
        labels, probabilities = outputs[0], outputs[1]
        expected_labels = model.predict(rows)
        disagree = int(np.sum(np.asarray(labels).ravel() != np.asarray(expected_labels).ravel()))
        if disagree:
            raise error(f"ONNX parity failed: {disagree} of {len(rows)} labels differ")
        gap = float(np.max(np.abs(probabilities - model.predict_proba(rows))))
    else:
        # float32 carries ~7 significant digits, so a value of 300 cannot agree to 1e-4 absolutely.
        expected = np.asarray(model.predict(rows)).ravel()
        gap = float(np.max(np.abs(outputs[0].ravel() - expected) / np.maximum(1.0, np.abs(expected))))
    if gap > PROBABILITY_TOLERANCE:
        raise error(f"ONNX parity failed: max difference {gap:.2e} exceeds {PROBABILITY_TOLERANCE}")
    return gap
