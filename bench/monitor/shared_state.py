"""What the monitor's shared state costs per event, and how far grouping events into one store
transaction brings it back: PredictionLogged of 1 and of 64 rows, and label joins (4 rows a
request), on SQLite and on PostgreSQL (a pgserver of its own, stopped at the end).

Each figure drives one MonitorCore directly (no Kafka) with `--concurrency` callers at once, as
events in flight from several partitions, for `--events` events; a drift evaluation runs every
`evaluate_every` rows, as in production. Baselines in the same run: the in-memory core of main
before shared state (`git show <ref>:services/monitor/core.py`, the window and labels in memory) and
the shared-state core with one caller at a time (every event its own transaction). "batches of 64
events": what the monitor's Kafka batch subscriber hands the core, 64 events at once (predictions by
`record_predictions_many`, one transaction for the 64; label joins concurrently, as
`cascade.messaging.each_concurrently` runs them), one batch after another.

    flock /tmp/cascade-heavy.lock .venv/bin/python bench/monitor/shared_state.py [--no-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cascade.database import sqlite_url
from cascade.services.monitor.core import DriftPolicy, LoggedPredictions, MonitorCore, Reference
from cascade.services.monitor.store import MonitorStore, ReferenceInfo

FEATURES = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta")
MODEL = "churn"
WINDOW = 200  # the settings' default
ROOT = Path(__file__).resolve().parents[2]


class Source:
    def __init__(self) -> None:
        self.rows = np.random.default_rng(1).normal(size=(2000, len(FEATURES)))

    async def fetch(self, model: str, model_version: int) -> Reference:
        info = ReferenceInfo(model, model_version, "customers", "ds-v1", FEATURES, len(self.rows))
        target = (self.rows[:, 0] > 0).astype(np.float64)
        return Reference(info, self.rows, target, "classification", {"holdout_accuracy": 0.95})


def in_memory_core_class(ref: str) -> Any:
    """main's MonitorCore from before shared state, loaded from git under another module name."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{ref}:services/monitor/core.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    metrics = "from prometheus_client import Counter, Gauge"
    assert metrics in source
    source = source.replace(  # its metrics in a registry of their own: the names are taken
        metrics,
        "from prometheus_client import CollectorRegistry, Counter as _Counter, Gauge as _Gauge\n"
        "_REGISTRY = CollectorRegistry()\n"
        "def Counter(*a, **k): return _Counter(*a, registry=_REGISTRY, **k)\n"
        "def Gauge(*a, **k): return _Gauge(*a, registry=_REGISTRY, **k)",
    )
    path = Path(tempfile.mkdtemp()) / "in_memory_core.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("in_memory_core", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["in_memory_core"] = module
    spec.loader.exec_module(module)
    return module.MonitorCore


EVERY = 50  # the settings' default (EVALUATE_EVERY); --evaluate-every


def core_of(core_class: Any, store: MonitorStore, every: int = EVERY) -> Any:
    policy = DriftPolicy(calibration_draws=50, trigger_after=10**9, min_labels=30)
    return core_class(
        store, Source(), window_size=WINDOW, evaluate_every=every, p_value_threshold=0.05, policy=policy
    )


async def run(callers: int, events: int, event: Callable[[int], Awaitable[object]]) -> float:
    """Seconds to run `events` events, `callers` at a time (each caller's events in order)."""
    started = time.perf_counter()

    async def caller(first: int) -> None:
        for index in range(first, events, callers):
            await event(index)

    await asyncio.gather(*(caller(first) for first in range(callers)))
    return time.perf_counter() - started


async def run_batched(batch: int, events: int, handle: Callable[[range], Awaitable[object]]) -> float:
    """Seconds to run `events` events handed over `batch` at a time, one batch after another."""
    started = time.perf_counter()
    for first in range(0, events, batch):
        await handle(range(first, min(first + batch, events)))
    return time.perf_counter() - started


async def measure(
    core: Any, rows_per_event: int, events: int, callers: int, batch: int = 1
) -> dict[str, float]:
    rng = np.random.default_rng(rows_per_event)
    batches = [rng.normal(size=(rows_per_event, len(FEATURES))).tolist() for _ in range(64)]
    outputs = [[float(r[0] > 0) for r in batch] for batch in batches]
    tag = f"{rows_per_event}-{callers}-{time.monotonic_ns()}"

    async def predictions(index: int) -> object:
        return await core.record_predictions(
            MODEL, FEATURES, batches[index % 64], outputs[index % 64], f"{tag}-{index}"
        )

    async def predictions_batch(indexes: range) -> object:
        return await core.record_predictions_many(
            [
                LoggedPredictions(MODEL, FEATURES, batches[i % 64], outputs[i % 64], f"{tag}-{i}")
                for i in indexes
            ]
        )

    if batch > 1:
        seconds = await run_batched(batch, events, predictions_batch)
    else:
        seconds = await run(callers, events, predictions)
    figures = {"pred_ms": 1000 * seconds / events, "pred_rows_s": events * rows_per_event / seconds}
    if rows_per_event == 4:  # label joins of the requests just logged

        async def labels(index: int) -> object:
            return await core.record_labels(MODEL, f"{tag}-{index}", outputs[index % 64])

        async def labels_batch(indexes: range) -> object:
            return await asyncio.gather(*(labels(i) for i in indexes))

        if batch > 1:
            seconds = await run_batched(batch, events, labels_batch)
        else:
            seconds = await run(callers, events, labels)
        figures |= {"label_ms": 1000 * seconds / events, "label_rows_s": events * rows_per_event / seconds}
    return figures


Figures = dict[str, float]  # "pred1", "pred64", "pred4", "labels4": rows/s of each kind of event


async def bench(
    url: str,
    root: Path,
    core_class: Any,
    events: int,
    callers: int,
    every: int,
    sync: bool = True,
    batch: int = 1,
) -> Figures:
    store = MonitorStore(root, url, sync_each_commit=sync)
    try:
        core = core_of(core_class, store, every)
        await core.set_reference(MODEL, 1)
        figures: Figures = {}
        for rows in (1, 64, 4):
            count = events if rows != 64 else max(events // 8, 50)
            measured = await measure(core, rows, count, callers, batch)
            figures[f"pred{rows}"] = measured["pred_rows_s"]
            if "label_rows_s" in measured:
                figures["labels4"] = measured["label_rows_s"]
        return figures
    finally:
        store.close()


KINDS = {
    "pred1": "PredictionLogged, 1 row",
    "pred64": "PredictionLogged, 64 rows",
    "pred4": "PredictionLogged, 4 rows",
    "labels4": "labels joined, 4 rows a request",
}


def report(dialect: str, runs: dict[str, Figures]) -> None:
    """Rows/s per kind of event and run, and each run's ratio to the in-memory core's."""
    baseline = runs["in-memory (main), 1 caller"]
    print(f"\n{dialect}: rows/s (ratio to the in-memory core of main)")
    print(f"| event | {' | '.join(runs)} |")
    print("|---" * (len(runs) + 1) + "|")
    for kind, name in KINDS.items():
        cells = [f"{figures[kind]:,.0f} ({figures[kind] / baseline[kind]:.2f}x)" for figures in runs.values()]
        print(f"| {name} | {' | '.join(cells)} |", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1000, help="events per figure (64-row ones: 1/8)")
    parser.add_argument("--concurrency", type=int, default=16, help="callers at once, batched runs")
    parser.add_argument("--baseline-ref", default="1360b1c", help="git ref of the in-memory core")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument(
        "--evaluate-every", type=int, default=EVERY, help="rows between drift reports (huge: the store alone)"
    )
    args = parser.parse_args()
    in_memory = in_memory_core_class(args.baseline_ref)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {load}; "
        f"{args.events} events a figure ({max(args.events // 8, 50)} of 64 rows), a report every "
        f"{args.evaluate_every} rows, window {WINDOW}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        databases: list[tuple[str, Callable[[str], str]]] = [
            ("sqlite", lambda name: sqlite_url(root / f"{name}.sqlite3"))
        ]
        server: Any = None
        if not args.no_postgres:
            import pgserver  # type: ignore[import-not-found]
            import sqlalchemy as sa

            server = pgserver.get_server(root / "pg", cleanup_mode="stop")
            admin = f"postgresql+psycopg://postgres@/postgres?host={root / 'pg'}"

            def postgres(name: str) -> str:
                engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
                with engine.connect() as connection:
                    connection.exec_driver_sql(f"CREATE DATABASE {name}")
                engine.dispose()
                return admin.replace("/postgres?", f"/{name}?")

            databases.append(("postgresql", postgres))
        try:
            for dialect, url_of in databases:
                runs = {
                    "in-memory (main), 1 caller": await bench(
                        url_of("memory"), root, in_memory, args.events, 1, args.evaluate_every
                    ),
                    "shared, 1 caller": await bench(
                        url_of("one"), root, MonitorCore, args.events, 1, args.evaluate_every
                    ),
                    # What the service runs (MonitorSettings.database_sync_each_commit is off).
                    "shared, 1 caller, no fsync per commit": await bench(
                        url_of("lazy"), root, MonitorCore, args.events, 1, args.evaluate_every, sync=False
                    ),
                    f"shared, {args.concurrency} callers": await bench(
                        url_of("many"), root, MonitorCore, args.events, args.concurrency, args.evaluate_every
                    ),
                    # What the monitor's Kafka batch subscriber does (no fsync per commit either).
                    "shared, batches of 64 events, no fsync": await bench(
                        url_of("batched"),
                        root,
                        MonitorCore,
                        args.events,
                        1,
                        args.evaluate_every,
                        sync=False,
                        batch=64,
                    ),
                }
                report(dialect, runs)
        finally:
            if server is not None:
                server.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
