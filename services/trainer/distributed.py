"""One hyperparameter study spread over trainer replicas: Optuna's RDB storage on a shared database.

The replica that owns a run (its partition got the event) opens the study, named after the run's
idempotency key so a redelivered event resumes it, and puts the budget into it as *slots*: exactly
`max_trials` WAITING trials (the grid's points, the random search's points drawn from the spec's
seed, or empty ones the Bayesian sampler fills in). Every participant, owner or joiner, only claims
waiting slots and never creates a trial, so the replicas together run exactly the budget: a claim
is one row moved from WAITING to RUNNING under the row's lock (PostgreSQL's FOR UPDATE; on SQLite
every transaction begins IMMEDIATE, which serialises it the same way).

A replica that dies mid-trial stops beating: once its heartbeat is older than the grace period,
whichever participant looks next marks that trial FAIL and puts a WAITING copy with the same
parameters back (a bounded number of times), so the study still reaches its budget. Participants
keep going until no slot waits and no trial runs, or their deadline passes.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat  # not re-exported; what record_heartbeat is on
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)

STUDY_PREFIX = "cascade-"
# A trial whose replica died is tried again at most this often; a trial that kills every replica
# that runs it (out of memory, say) must not stall the study for ever.
MAX_RETRIES = 2
CLAIMED_BY = "cascade.claimed_by"
OPEN_ATTEMPTS = 5
_SCORED = (TrialState.COMPLETE, TrialState.PRUNED)
_OPEN = (TrialState.WAITING, TrialState.RUNNING)

Objective = Callable[[optuna.Trial], float]
OnFinished = Callable[[optuna.Study, FrozenTrial], None]


@dataclass(frozen=True)
class StudyStorage:
    """Where shared studies live, and how quickly a dead participant's trial is given up on."""

    url: str
    heartbeat_seconds: int = 10
    grace_seconds: int = 30
    poll_seconds: float = 1.0

    def open(self) -> RDBStorage:
        """The storage; its tables are created on first use. Optuna's first use is not safe against
        itself (two processes both create the tables, both stamp the schema version): the loser
        fails on a constraint or a lock, and finds the tables made when it tries again."""
        for attempt in range(OPEN_ATTEMPTS):
            try:
                with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.8
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    storage = RDBStorage(
                        self.url,
                        engine_kwargs=_engine_kwargs(self.url),
                        heartbeat_interval=self.heartbeat_seconds,
                        grace_period=self.grace_seconds,
                        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                            max_retry=MAX_RETRIES
                        ),
                    )
                break
            except sa.exc.DBAPIError as exc:
                if not _lost_creation_race(exc) or attempt == OPEN_ATTEMPTS - 1:
                    raise
                log.info("study storage busy being created (%s); trying again", type(exc).__name__)
                time.sleep(0.5 * (attempt + 1))
        if storage.engine.dialect.name == "sqlite":
            _begin_immediate(storage.engine)
        return storage


@dataclass(frozen=True)
class SharedStudy:
    """One participant's view of a shared study: where, which, who it is, and whether it owns the
    run (puts the budget in, waits for the others, refits and exports the best)."""

    storage: StudyStorage
    name: str
    worker: str
    owner: bool = True
    # Told (from the training thread) once the owner has put the budget in: time to invite the others.
    on_open: Callable[[], None] | None = None


def is_open(storage: StudyStorage, name: str) -> bool:
    """Whether the study exists and has a trial waiting: whether joining it can help."""
    try:
        study = optuna.load_study(study_name=name, storage=storage.open())
    except KeyError:
        return False
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def study_name(model: str, run_key: str) -> str:
    """The study of one run: the same model and idempotency key, the same study (a redelivered
    event resumes it); short and free of the key's characters."""
    return STUDY_PREFIX + hashlib.sha256(f"{model}\0{run_key}".encode()).hexdigest()[:32]


def open_study(
    storage: RDBStorage, name: str, sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner
) -> optuna.Study:
    """The study, created if it does not exist yet (the owner and a joiner may race to it)."""
    return optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )


def fill_slots(study: optuna.Study, budget: int, points: list[dict[str, Any]]) -> int:
    """Top the study up to `budget` slots: point i (if any) fixes slot i's parameters, the rest are
    left to the sampler. Slots already there (a resumed study) are not added again: the budget counts
    every trial that is waiting, running or scored, and a failed one only through its retry. The
    number of slots added."""
    taken = len(study.get_trials(deepcopy=False, states=(*_OPEN, *_SCORED)))
    for index in range(taken, budget):
        study.enqueue_trial(points[index] if index < len(points) else {}, skip_if_exists=False)
    return max(0, budget - taken)


def work_on(
    study: optuna.Study,
    objective: Objective,
    deadline: float,
    worker: str,
    on_finished: OnFinished | None = None,
    poll_seconds: float = 1.0,
) -> int:
    """Claim and run waiting slots until none waits and none runs anywhere, or `deadline` (a
    time.monotonic() value) passes: waiting for others' running trials is what lets a dead one be
    noticed and its retry run. The number of trials this participant finished."""
    storage = study._storage
    assert isinstance(storage, BaseHeartbeat), "a shared study lives in a storage with heartbeats"
    finished = 0
    while time.monotonic() < deadline:
        _fail_stale(study)
        trial_id = _claim(study)
        if trial_id is None:
            if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                break
            time.sleep(poll_seconds)
            continue
        study._thread_local.cached_all_trials = None  # as Study.ask does: read the others' trials afresh
        trial = optuna.Trial(study, trial_id)
        storage.set_trial_system_attr(trial_id, CLAIMED_BY, worker)
        with _beating(storage, trial_id):
            frozen = _run(study, trial, objective)
        finished += 1
        if on_finished is not None:
            on_finished(study, frozen)
    return finished


def wait_for_slots(study: optuna.Study, deadline: float, poll_seconds: float = 1.0) -> bool:
    """Whether the study has slots by `deadline`: a joiner told of a study before its owner filled
    it waits for them rather than finding nothing to do."""
    while not study.get_trials(deepcopy=False):
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_seconds)
    return True


def wait_for_running(study: optuna.Study, deadline: float, poll_seconds: float = 1.0) -> list[FrozenTrial]:
    """The trials still running when `deadline` passes (none: everyone is done)."""
    while True:
        _fail_stale(study)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(poll_seconds)


def _run(study: optuna.Study, trial: optuna.Trial, objective: Objective) -> FrozenTrial:
    try:
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            return study.tell(trial, state=TrialState.PRUNED)
        except Exception:
            study.tell(trial, state=TrialState.FAIL)
            raise
        return study.tell(trial, value)
    except optuna.exceptions.UpdateFinishedTrialError:
        # Our heartbeat came too late (a starved machine): another participant failed the trial and
        # queued its retry, which counts instead of this result.
        log.warning("trial %d was failed by another participant while running here", trial.number)
        return study._storage.get_trial(trial._trial_id)


def _claim(study: optuna.Study) -> int | None:
    """A waiting slot moved to RUNNING by this participant, or None when none is left."""
    for waiting in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if study._storage.set_trial_state_values(waiting._trial_id, TrialState.RUNNING):
                return waiting._trial_id
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


@contextmanager
def _beating(storage: BaseHeartbeat, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat while it runs, as Study.optimize does."""
    interval = storage.get_heartbeat_interval() or 10
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _lost_creation_race(error: sa.exc.DBAPIError) -> bool:
    """Whether `error` is what losing the race to create the tables looks like: a constraint or a
    lock, or (PostgreSQL) a table the winner created meanwhile (DuplicateTable, a ProgrammingError)."""
    if isinstance(error, (sa.exc.IntegrityError, sa.exc.OperationalError)):
        return True
    return isinstance(error, sa.exc.ProgrammingError) and "already exists" in str(error.orig)


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # No implicit BEGIN from the first connection on: RDBStorage creates its tables before
        # _begin_immediate is in place, and several processes doing that at once in SQLite's
        # deferred transactions deadlock ("database is locked" at once, no waiting); statement by
        # statement they wait their turn within the timeout.
        return {"connect_args": {"timeout": 60, "isolation_level": None}}
    return {"pool_pre_ping": True}


def _begin_immediate(engine: sa.Engine) -> None:
    """SQLite has no FOR UPDATE: without this, two processes can both read a slot as WAITING and
    both claim it. BEGIN IMMEDIATE takes the write lock at the start of every transaction."""

    @sa.event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _immediate(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # the connections RDBStorage opened before the listeners
