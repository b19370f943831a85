"""Progressive delivery on the real stack (real Kafka, real gRPC, six service processes), under a
steady inference load that never stops and in which no request may fail:

- a model on the PROGRESSIVE policy gets a better-trained version; the registry starts its rollout
  itself once it passes validation: in shadow it scores live requests beside the champion without
  answering them, then as a canary it answers 20% and then 50% of them, and the monitor moves it on
  and finally promotes it to champion, every move in the alias history and on traffic-changed.v1;
- a second, deliberately broken challenger (it predicts one class whatever the rows), imported as
  ONNX and let through the validator's gates (this model's are loosened in conftest.py), is rolled
  out as a canary, and the monitor rolls it back on its own from what it sees on live traffic, the
  cause (the breached threshold and its measured value) recorded in the registry's rollout, the
  alias history and ModelTrafficChanged(action=rolled_back), and told in Slack and Teams.

The champion's latency with the shadow beside it, against without, is printed (the project keeps
timing assertions out of tests; bench/loop/run.py holds that bound)."""

from __future__ import annotations

import asyncio
import bisect
import random
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as triton
from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from cascade.client.records import AliasMove, RolloutStep, RolloutThresholds, Traffic
from cascade.client.registry import RegistryClient
from cascade.client.trainer import TrainerClient
from cascade.events import Event, LiveTrafficReported, ModelTrafficChanged, PredictionsCompared, Topics
from cascade.services.trainer.training import export_onnx
from cascade.stack import Stack
from tests.integration.chat import titled
from tests.integration.support import model_ready, triton_client, upload, wait_for
from tests.registry.chat_receiver import ChatReceiver

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

MODEL = "progressive_bc"
TIMEOUT = 240.0
TOPICS = Topics("it")
# Small enough for a test, large enough that each step sees both versions on real traffic.
STEP_REQUESTS = 150
STEP_SECONDS = 4.0
COMPARED_ROWS = RolloutThresholds().min_compared_rows  # the default: 100
LOAD_THREADS = 2

E = TypeVar("E", bound=Event)
T = TypeVar("T")


# -- the load ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    sent: float  # time.monotonic()
    answered: float
    version: str

    @property
    def latency_ms(self) -> float:
        return 1000 * (self.answered - self.sent)


@dataclass
class Load:
    """Closed-loop clients over tritonclient's gRPC, each with its own connection, sending 1 to 4 rows
    a request with a fresh request id (the routing key) until stopped. Every failure is kept."""

    stack: Stack
    model: str
    rows: np.ndarray
    # What the test saw of the split, and when (time.monotonic()), as it followed the rollout.
    timeline: list[tuple[float, str]] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, threads: int) -> None:
        for number in range(threads):
            thread = threading.Thread(target=self._run, args=(number,), name=f"load-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self, seed: int) -> None:
        client, headers = triton_client(self.stack)
        chooser = random.Random(seed)
        try:
            while not self._stop.is_set():
                start = chooser.randrange(len(self.rows) - 4)
                picked = self.rows[start : start + chooser.randint(1, 4)].astype(np.float32)
                request = triton.InferInput("input", list(picked.shape), "FP32")
                request.set_data_from_numpy(picked)
                sent = time.monotonic()
                try:
                    result = client.infer(
                        self.model,
                        [request],
                        request_id=str(uuid.uuid4()),
                        headers=headers,
                        client_timeout=30,
                    )
                except Exception as exc:  # every kind of failure counts, none may happen
                    self.failures.append(f"{self.timeline[-1][1] if self.timeline else ''}: {exc!r}")
                    continue
                self.answers.append(Answer(sent, time.monotonic(), str(result.get_response().model_version)))
                self._stop.wait(0.003)  # a steady load, not a saturating one: others share the cores
        finally:
            client.close()

    def mark(self, phase: str, seen_after: float | None = None) -> None:
        """Note that the split was `phase` when looked at, at some time after `seen_after`."""
        self.timeline.append((time.monotonic() if seen_after is None else seen_after, phase))

    def within(self, phase: str) -> list[Answer]:
        """The answers to requests made and answered while the split was surely `phase`: between
        two looks at it that both saw `phase`, with none in between seeing anything else. (Serving
        follows the registry, never leads it, so a request there was served by `phase` or by what
        came before it.)"""
        times, phases = [t for t, _ in self.timeline], [p for _, p in self.timeline]
        surely = []
        for answer in list(self.answers):
            first, last = (
                bisect.bisect_right(times, answer.sent) - 1,
                bisect.bisect_left(times, answer.answered),
            )
            if first >= 0 and last < len(times) and set(phases[first : last + 1]) == {phase}:
                surely.append(answer)
        return surely

    def answered_by(self, phase: str) -> set[str]:
        return {a.version for a in self.within(phase)}

    def p99(self, phase: str) -> tuple[float, int]:
        latencies = [a.latency_ms for a in self.within(phase)]
        return (float(np.percentile(latencies, 99)) if latencies else float("nan")), len(latencies)


def _phase(traffic: Traffic) -> str:
    if traffic.shadow_version:
        return f"shadow v{traffic.shadow_version}"
    if traffic.canary_version:
        return f"canary v{traffic.canary_version} {traffic.canary_percent:g}%"
    return f"champion v{traffic.champion_version}"


# -- the registry, through its typed client ----------------------------------------------------
def _registry(stack: Stack, use: Callable[[RegistryClient], Awaitable[T]]) -> T:
    async def run() -> T:
        async with RegistryClient.connect(
            stack.address("registry"), stack.client_security, timeout=20
        ) as client:
            return await use(client)

    return asyncio.run(run())


def _follow(stack: Stack, load: Load, until: Callable[[Traffic], bool], what: str) -> Traffic:
    """Poll the model's traffic, tagging the load with the split it sees, until `until` holds."""

    def look() -> Traffic | None:
        # Stamped with the time the look began: the split it saw held then or after, which is what
        # the load's bracketing (Load.within) needs at either end.
        began = time.monotonic()
        traffic = _registry(stack, lambda r: r.get_traffic(MODEL))
        load.mark(_phase(traffic), seen_after=began)
        return traffic if until(traffic) else None

    return wait_for(look, TIMEOUT, what, interval=0.25)


# -- Kafka -------------------------------------------------------------------------------------
def _events(stack: Stack, event_type: type[E], key: str) -> list[E]:
    """Every event of `event_type` keyed `key` on its real topic, read from the beginning."""

    async def read() -> list[E]:
        consumer = AIOKafkaConsumer(
            TOPICS.for_event(event_type),
            bootstrap_servers=stack.address("kafka"),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            batches = await consumer.getmany(timeout_ms=3000)
            while more := await consumer.getmany(timeout_ms=1000):
                for partition, records in more.items():
                    batches.setdefault(partition, []).extend(records)
        finally:
            await consumer.stop()
        ours = [r for records in batches.values() for r in records if r.key == key.encode()]
        parsed = []
        for record in sorted(ours, key=lambda r: r.timestamp):
            try:
                parsed.append(event_type.model_validate_json(record.value))
            except ValidationError:  # another type sharing the key's topic would be a bug: say so
                raise AssertionError(
                    f"{record.value[:200]!r} on {record.topic} is no {event_type.__name__}"
                ) from None
        return parsed

    return asyncio.run(read())


# -- the broken challenger ---------------------------------------------------------------------
def _constant_onnx(rows: np.ndarray, label: int) -> bytes:
    """A classifier that answers `label` for any row (a logistic regression with no weights),
    exported as the trainer exports its models: one float input, a label and a probability tensor."""
    width = rows.shape[1]
    model = LogisticRegression().fit(np.vstack([np.zeros(width), np.ones(width)]), [0, 1])
    model.coef_[:] = 0.0
    model.intercept_[:] = 8.0 if label == 1 else -8.0
    return export_onnx(Pipeline([("model", model)]), rows.shape[1], "classification")


# -- the test, step by step -------------------------------------------------------------------
def _champion_then_progressive(stack: Stack, frame: pd.DataFrame) -> RolloutThresholds:
    """v1 on 300 rows becomes champion the usual way; then the model turns progressive, with a plan
    short enough for a test: shadow over every request, then a canary answering 20%, then 50%."""
    _registry(stack, lambda r: r.register_model(MODEL, promotion_policy="automatic"))
    upload(stack, MODEL, frame.iloc[:300])
    wait_for(lambda: model_ready(stack, MODEL, "1"), TIMEOUT, "serving to load v1")
    _registry(stack, lambda r: r.update_model(MODEL, promotion_policy="progressive"))
    thresholds = RolloutThresholds(min_compared_rows=COMPARED_ROWS)
    steps = [
        RolloutStep(stage=stage, percent=percent, min_requests=STEP_REQUESTS, min_seconds=STEP_SECONDS)
        for stage, percent in (("shadow", 100.0), ("canary", 20.0), ("canary", 50.0))
    ]
    _registry(stack, lambda r: r.set_rollout_plan(MODEL, steps, thresholds, actor="h8-test"))
    return thresholds


def _good_challenger_promoted(stack: Stack, load: Load, frame: pd.DataFrame) -> None:
    """v2, trained on every row, passes validation: a challenger the registry rolls out itself,
    which the monitor moves through the plan to champion."""
    load.mark("training v2")
    upload(stack, MODEL, frame.iloc[300:])
    _follow(stack, load, lambda t: t.shadow_version == 2, "v2 in shadow")
    _follow(stack, load, lambda t: t.canary_version == 2 and t.canary_percent == 20, "v2 as a 20% canary")
    _follow(stack, load, lambda t: t.canary_version == 2 and t.canary_percent == 50, "v2 as a 50% canary")
    promoted = _follow(
        stack,
        load,
        lambda t: t.rollout is not None and t.rollout.version == 2 and t.rollout.state != "running",
        "v2's rollout to end",
    )
    assert promoted.rollout is not None and promoted.rollout.state == "promoted", promoted
    assert (promoted.champion_version, promoted.canary_version, promoted.shadow_version) == (2, 0, 0)
    wait_for(lambda: {a.version for a in load.answers[-40:]} == {"2"}, TIMEOUT, "v2 to answer everything")


def _broken_challenger_rolled_back(
    stack: Stack, load: Load, frame: pd.DataFrame, thresholds: RolloutThresholds, workdir: Path
) -> Traffic:
    """v3 predicts one class for every row. Imported as an ONNX model with the dataset as its
    reference, it is gated like a trained one; this model's gates are loosened (conftest.py) so
    that it passes them and reaches live traffic, where only the monitor's judgement stands between
    it and the users. The registry rolls it out itself through a plan of one canary step that never
    advances on its own (it asks for a billion requests)."""
    endless = [RolloutStep(stage="canary", percent=50.0, min_requests=10**9, min_seconds=3600.0)]
    _registry(stack, lambda r: r.set_rollout_plan(MODEL, endless, thresholds, actor="h8-test"))
    features = [c for c in frame.columns if c != "target"]
    artifact = workdir / "constant.onnx"
    artifact.write_bytes(_constant_onnx(frame[features].to_numpy(np.float64), label=1))

    async def import_it() -> int:
        async with TrainerClient.connect(
            stack.address("trainer"), stack.client_security, timeout=60
        ) as trainer:
            imported = await trainer.import_model(
                MODEL,
                artifact,
                format="onnx",
                features=features,
                task="classification",
                dataset=MODEL,
                actor="h8-test",
                reason="a broken challenger: predicts class 1 whatever the rows",
            )
        return imported.model_version

    assert asyncio.run(import_it()) == 3
    # Its canary may be short: the monitor needs only min_compared_rows of evidence to judge it.
    ended = _follow(
        stack,
        load,
        lambda t: t.rollout is not None and t.rollout.version == 3 and t.rollout.state != "running",
        "the monitor to roll v3 back",
    )
    wait_for(
        lambda: {a.version for a in load.answers[-40:]} == {"2"}, TIMEOUT, "v2 to answer everything again"
    )
    return ended


def _check_what_was_served(load: Load) -> None:
    assert load.failures == [], load.failures[:5]  # no inference request failed, at any point
    shadow_p99, shadow_n = load.p99("shadow v2")
    alone_p99, alone_n = load.p99("alone")
    print(
        f"\nchampion's p99 as the client saw it: alone {alone_p99:.2f} ms ({alone_n} requests), "
        f"with v2 in shadow {shadow_p99:.2f} ms ({shadow_n} requests), ratio {shadow_p99 / alone_p99:.2f}"
    )
    # The shadow answers nothing; the canary answered its share while v1 was still champion.
    assert load.answered_by("shadow v2") == {"1"}
    assert load.answered_by("canary v2 20%") == {"1", "2"}
    assert load.answered_by("canary v2 50%") == {"1", "2"}
    assert "3" in {a.version for a in load.answers}  # the broken canary did answer, for a while
    assert load.answered_by("end") == {"2"}


def _check_live_evidence(stack: Stack) -> None:
    """The shadow really scored live requests, and rows of both challengers were compared."""
    reports = _events(stack, LiveTrafficReported, MODEL)
    scored = sum(v.requests for r in reports for v in r.versions if v.role == "shadow" and v.version == 2)
    assert scored >= STEP_REQUESTS, scored
    assert sum(v.failures for r in reports for v in r.versions) == 0
    compared = _events(stack, PredictionsCompared, MODEL)
    rows = sum(
        len(c.request_ids) for c in compared if (c.challenger_role, c.challenger_version) == ("shadow", 2)
    )
    assert rows >= COMPARED_ROWS, rows
    assert any((c.challenger_role, c.challenger_version) == ("canary", 3) for c in compared)


def _check_rollback_recorded(stack: Stack, chat: ChatReceiver, ended: Traffic) -> None:
    """The monitor's cause, the same in the rollout, the alias history, the event and the chat."""
    assert ended.rollout is not None and ended.rollout.state == "rolled_back", ended
    assert (ended.champion_version, ended.canary_version, ended.shadow_version) == (2, 0, 0)
    cause = ended.rollout.cause
    measured = re.findall(r"\d+(?:\.\d+)?", cause)
    assert measured and any(name in cause for name in ("agreement", "prediction_drift", "drift")), cause

    changes = _events(stack, ModelTrafficChanged, MODEL)
    actions = [(c.action, c.rollout_version) for c in changes]
    assert actions[actions.index(("rollout_started", 2)) :].count(("promoted", 2)) == 1, actions
    [rolled_back] = [c for c in changes if c.action == "rolled_back"]
    assert rolled_back.rollout_version == 3 and rolled_back.reason == cause, rolled_back
    assert (rolled_back.canary_version or 0, rolled_back.champion_version) == (0, 2)
    assert rolled_back.actor != "h8-test"  # nobody but the monitor stopped it
    revisions = [c.revision for c in changes]
    assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions), revisions

    moves = [(m.alias, m.from_version, m.to_version, m.traffic_percent) for m in _history(stack)]
    assert ("shadow", 0, 2, 100.0) in moves, moves
    assert ("canary", 0, 2, 20.0) in moves and ("canary", 2, 2, 50.0) in moves, moves
    assert ("champion", 1, 2) in [m[:3] for m in moves], moves
    assert ("canary", 0, 3, 50.0) in moves, moves
    [cleared] = [m for m in _history(stack) if m.alias == "canary" and m.from_version == 3]
    assert cleared.to_version == 0 and cause in cleared.reason, cleared

    slack, card = wait_for(lambda: titled(chat, f"{MODEL} v3 rolled back"), TIMEOUT, "the rollback told")
    assert chat.rejected == []
    facts = {
        f["title"]: f["value"] for block in card["body"] if block["type"] == "FactSet" for f in block["facts"]
    }
    assert (facts["Rolled back"], facts["Champion"]) == ("v3", "v2 takes all traffic"), facts
    # Chats escape and clip text their own way: the first breach's figures are what must get through.
    first = re.findall(r"\d+(?:\.\d+)?", cause.split(";")[0])
    assert all(figure in facts["Cause"] and figure in str(slack) for figure in first), (cause, facts)


def _history(stack: Stack) -> list[AliasMove]:
    return _registry(stack, lambda r: r.alias_history(MODEL))


def test_a_challenger_goes_shadow_canary_champion_and_a_broken_one_is_rolled_back_with_no_failed_request(
    stack: Stack, chat: ChatReceiver, tmp_path: Path
) -> None:
    frame = load_breast_cancer(as_frame=True).frame.sample(frac=1.0, random_state=19).reset_index(drop=True)
    rows = frame.drop(columns="target").to_numpy(np.float64)
    thresholds = _champion_then_progressive(stack, frame)

    load = Load(stack, MODEL, rows)
    load.mark("alone")
    load.start(LOAD_THREADS)
    try:
        # The champion alone, long enough to know its latency under this load, before v2's training
        # takes the cores.
        wait_for(lambda: load.mark("alone") or len(load.answers) >= 400, TIMEOUT, "400 answers of v1 alone")
        _good_challenger_promoted(stack, load, frame)
        ended = _broken_challenger_rolled_back(stack, load, frame, thresholds, tmp_path)
        answered = len(load.answers)
        wait_for(lambda: load.mark("end") or len(load.answers) >= answered + 100, TIMEOUT, "100 more answers")
        load.mark("end")
    finally:
        load.stop()

    _check_what_was_served(load)
    _check_live_evidence(stack)
    _check_rollback_recorded(stack, chat, ended)
