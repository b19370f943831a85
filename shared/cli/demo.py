"""`cascade demo`: two batches of data in, two models out, with nobody touching the models.

Batch 1 (60% of scikit-learn's breast-cancer data) cascades through ingest, trainer, validator,
registry and serving into model version 1; batch 2 (the other 40%) into version 2. The demo times
each cascade from the upload to the new version serving, and checks a few predictions. The web
console starts beside the stack, so the cascades can be watched on its Loop page.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sklearn.datasets import load_breast_cancer

from cascade.cli.client import IngestResult, ingest_file, setup_cli_tracing
from cascade.cli.errors import DemoError
from cascade.client.channels import ClientSecurity
from cascade.client.explain import ExplainClient
from cascade.client.serving import ServingClient
from cascade.errors import CascadeError
from cascade.stack import Stack, StackError

__all__ = ["DATASET", "CascadeOutcome", "DemoBatches", "run_demo", "serves", "summary", "write_batches"]

DATASET = "breast_cancer"
MODEL = DATASET  # the trainer names a model after its dataset
TARGET = "target"
SEED = 7
FIRST_BATCH_SHARE = 0.6
PROBE_ROWS = 5
_POLL_INTERVAL = 0.05  # fine enough that the reported seconds mean something
_PROGRESS_EVERY = 10.0

Echo = Callable[[str], None]


@dataclass(frozen=True)
class DemoBatches:
    first: Path
    second: Path
    # The first rows of batch 2: model version 1 never saw them.
    probe_features: npt.NDArray[np.float32]
    probe_labels: npt.NDArray[np.int64]


@dataclass(frozen=True)
class CascadeOutcome:
    ingest: IngestResult
    expected_version: str
    seconds_to_serving: float
    # The version that answered the probe rows, and its labels for them.
    served_version: str
    labels: npt.NDArray[np.int64]
    correct: int


def write_batches(directory: Path) -> DemoBatches:
    """Shuffle the bundled breast-cancer data with a fixed seed and write it as two CSV batches."""
    frame = load_breast_cancer(as_frame=True).frame.sample(frac=1.0, random_state=SEED).reset_index(drop=True)
    cut = int(len(frame) * FIRST_BATCH_SHARE)
    directory.mkdir(parents=True, exist_ok=True)
    first, second = directory / "batch-1.csv", directory / "batch-2.csv"
    frame.iloc[:cut].to_csv(first, index=False)
    frame.iloc[cut:].to_csv(second, index=False)
    probe = frame.iloc[cut : cut + PROBE_ROWS]
    return DemoBatches(
        first=first,
        second=second,
        probe_features=probe.drop(columns=[TARGET]).to_numpy(dtype=np.float32),
        probe_labels=probe[TARGET].to_numpy(dtype=np.int64),
    )


def run_demo(
    stack: Stack, timeout: float, echo: Echo, console_port: int | None = None
) -> list[CascadeOutcome]:
    """Start the stack (and the console on `console_port`, unless None), run both cascades and
    return what happened; the stack keeps running."""
    stack.start(timeout=timeout)
    if console_port is not None:
        try:
            echo(f"Console: {stack.start_console(console_port)} (its Loop page follows the cascades)")
        except StackError as error:  # the demo runs on without it
            echo(f"Console not started: {error}")
    setup_cli_tracing(stack)
    batches = write_batches(stack.home / "demo")
    echo(f"Wrote {batches.first} and {batches.second}")
    return asyncio.run(_cascades(stack, batches, timeout, echo))


async def _cascades(
    stack: Stack, batches: DemoBatches, wait_seconds: float, echo: Echo
) -> list[CascadeOutcome]:
    serving = ServingClient(stack.address("serving"), stack.client_security)
    try:
        run = _DemoRun(stack, serving, batches, wait_seconds, echo)
        outcomes = [await run.cascade(batches.first, "1"), await run.cascade(batches.second, "2")]
    finally:
        await serving.close()
    await _explain_a_probe(stack, batches, echo)
    return outcomes


async def _explain_a_probe(stack: Stack, batches: DemoBatches, echo: Echo) -> None:
    """Why the champion answered the first probe row as it did: its attributions, which add up to
    its output. An aid to the demo, not part of it: a failure is said, not raised."""
    row = batches.probe_features[0]
    explainer = ExplainClient.connect(stack.address("serving"), stack.client_security, timeout=60)
    try:
        explained = await explainer.explain(MODEL, row)
    except CascadeError as error:
        echo(f"\nNo explanation of a probe row: {error}")
        return
    finally:
        await explainer.close()
    [why] = explained.rows
    ranked = sorted(zip(explained.features, why.attributions, strict=True), key=lambda pair: -abs(pair[1]))
    top = ", ".join(f"{name} {value:+.3f}" for name, value in ranked[:3])
    echo(
        f"\nWhy v{explained.version} answered {why.class_label or why.class_index} for the first probe row "
        f"({explained.method} SHAP, {explained.output_space}): base {why.base_value:.3f} + "
        f"attributions {sum(why.attributions):+.3f} = {why.output:.3f}; most: {top}"
    )
    values = ",".join(f"{value:g}" for value in row)
    echo(f"  every feature: cascade --home {stack.home} explain {MODEL} --row '{values}'")


async def model_serves(serving: ServingClient, model: str, version: str) -> bool:
    """Whether serving answers for `version` of `model`, asked directly or as the ready version it
    lists. Any failure (serving still starting, the model not loaded yet) counts as not yet."""
    try:
        if await serving.model_ready(model, version):
            return True
        served = await serving.model_metadata(model)
        return version in served.versions and await serving.model_ready(model)
    except CascadeError:
        return False


def serves(address: str, security: ClientSecurity, model: str, version: str) -> bool:
    """`model_serves` for a caller without an event loop (the bench), on a channel of its own."""

    async def ask() -> bool:
        serving = ServingClient(address, security)
        try:
            return await model_serves(serving, model, version)
        finally:
            await serving.close()

    return asyncio.run(ask())


@dataclass(frozen=True)
class _DemoRun:
    stack: Stack
    serving: ServingClient
    batches: DemoBatches
    timeout: float
    echo: Echo

    async def cascade(self, batch: Path, version: str) -> CascadeOutcome:
        """Ingest one batch, wait for the model version it should yield, and try that model."""
        self.echo(f"\nIngesting {batch.name} into dataset {DATASET!r}")
        started = time.monotonic()
        # The upload runs its own event loop (and traces itself), so it runs beside this one.
        result = await asyncio.to_thread(
            ingest_file,
            self.stack.address("ingest"),
            batch,
            DATASET,
            TARGET,
            security=self.stack.client_security,
        )
        if not result.created:
            raise DemoError(
                f"{self.stack.home} already holds {batch.name}, so no new model will be trained. "
                f"For a fresh demo run:\n  cascade --home {self.stack.home} down && rm -rf {self.stack.home}"
            )
        self.echo(
            f"  {result.rows_accepted}/{result.rows_received} rows accepted -> dataset version "
            f"{result.dataset_version} (trace {result.trace_id})"
        )
        await self._wait_until_served(version, result, started)
        seconds = time.monotonic() - started
        self.echo(f"  model {MODEL} version {version} serving {seconds:.1f} s after the upload")
        try:
            prediction = await self.serving.predict(MODEL, self.batches.probe_features, outputs=["label"])
        except CascadeError as error:
            raise DemoError(
                f"model {MODEL} version {version} is serving but cannot predict: {error}"
            ) from None
        labels = prediction["label"].reshape(-1).astype(np.int64)
        correct = int(np.sum(labels == self.batches.probe_labels))
        self.echo(f"  predicted {labels.tolist()} for true labels {self.batches.probe_labels.tolist()}")
        return CascadeOutcome(result, version, seconds, prediction.version, labels, correct)

    async def _wait_until_served(self, version: str, result: IngestResult, started: float) -> None:
        self.echo(f"  waiting for trainer -> validator -> registry -> serving to deliver version {version}")
        deadline = started + self.timeout
        next_report = time.monotonic() + _PROGRESS_EVERY
        while not await model_serves(self.serving, MODEL, version):
            now = time.monotonic()
            if now >= deadline:
                raise DemoError(
                    f"model {MODEL} version {version} was not serving {self.timeout:g} s after the upload.\n"
                    f"Follow the cascade in the logs: grep {result.trace_id} {self.stack.home}/logs/*.log\n"
                    "(`cascade status` shows which services are up; --timeout waits longer)"
                )
            if now >= next_report:
                self.echo(f"  ... still waiting for version {version} ({now - started:.0f} s)")
                next_report = now + _PROGRESS_EVERY
            await asyncio.sleep(_POLL_INTERVAL)


def summary(stack: Stack, outcomes: list[CascadeOutcome]) -> list[str]:
    """The closing report: what each cascade delivered, how fast, and where to dig further."""
    lines = ["", "Cascade demo summary"]
    for number, outcome in enumerate(outcomes, start=1):
        served = outcome.served_version or "?"
        mismatch = "" if served == outcome.expected_version else f" (expected {outcome.expected_version})"
        lines += [
            f"  cascade {number}: {outcome.ingest.source} -> model version {served}{mismatch} "
            f"serving after {outcome.seconds_to_serving:.1f} s",
            f"    accuracy on {PROBE_ROWS} rows of batch 2: {outcome.correct}/{PROBE_ROWS} "
            f"= {outcome.correct / PROBE_ROWS:.0%}",
            f"    trace id: {outcome.ingest.trace_id}",
        ]
    lines += [
        "  (version 1 never saw those rows; version 2 was trained on batch 2, them included)",
        f"  logs:   {stack.home}/logs/<service>.log",
        f"  traces: {_traces_hint(stack)}",
        "The stack is still running: `cascade status` shows it, `cascade down` stops it.",
    ]
    console = stack.console_status()
    if console.health == "SERVING":
        lines.append(f"Console: {console.endpoint}")
    return lines


def _traces_hint(stack: Stack) -> str:
    if "CASCADE_TRACES_FILE" not in stack.tracing_env("cli"):
        return "sent where your OTEL_TRACES_EXPORTER says"
    return f"{stack.home}/traces/<service>.jsonl (OTLP-JSON lines; grep a trace id)"
