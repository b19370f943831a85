"""Benchmark of the monitor: one drift report, Cascade against Evidently on the same data in the
same run, and prediction-log events consumed per second.

    .venv/bin/python bench/monitor/run.py [--rows 10000] [--features 30] [--repeat 5] [--events 5000]

1. Drift report: a 10,000-row window of 30 features against a 10,000-row reference (numeric; a
   third of the features shifted, so some drift and some do not). Evidently 0.7.23's DataDriftPreset
   runs in its own venv (bench/.work/evidently-venv, pandas < 3; created on first use) on the very
   same arrays; its time is `Report.run` plus `snapshot.dict()`, from DataFrames, best of --repeat.
   Cascade's is `feature_drift` against the prepared reference (what every report costs), best of
   --repeat; preparing the reference (once per champion) is reported apart, and added in a second
   ratio. The verdicts (test, drifted, per feature, and the dataset's) must be the same.
2. Prediction-log events: JSON PredictionLogged events (one request of 20 rows each) decoded and
   handed to MonitorCore.record_predictions with a real SQLite store: once with no report due (the
   window alone), once with the default cadence, a report every 50 rows over a window of 200
   against a 569 x 30 reference (KS with exact p-values, as Evidently). Baseline in the same run:
   decoding alone. In-process: Kafka's own cost is not in these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.monitor import evidently_env  # noqa: E402
from cascade.events import PredictionLogged  # noqa: E402
from cascade.services.monitor.core import MonitorCore, Reference  # noqa: E402
from cascade.services.monitor.drift import PreparedReference, dataset_drifted, feature_drift  # noqa: E402
from cascade.services.monitor.store import MonitorStore, ReferenceInfo  # noqa: E402


def drift_data(rows: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    scales, offsets = rng.uniform(0.5, 5.0, width), rng.uniform(-10, 10, width)
    reference = rng.normal(size=(rows, width)) * scales + offsets
    current = rng.normal(size=(rows, width)) * scales + offsets
    shifted = np.arange(width) % 3 == 0
    current[:, shifted] += 0.5 * scales[shifted]  # a third of the features move by half a std
    return reference, current, [f"f{i:02d}" for i in range(width)]


def best_of(repeat: int, call: Any) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = call()
        best = min(best, time.perf_counter() - started)
    return best, result


def bench_report(rows: int, width: int, repeat: int) -> dict[str, Any]:
    reference, current, features = drift_data(rows, width)
    prepare_seconds, prepared = best_of(
        repeat,
        lambda: PreparedReference.of(reference, features, input_dtype=None),  # as Evidently
    )
    report_seconds, ours = best_of(repeat, lambda: feature_drift(current, prepared))

    python = evidently_env.ensure()
    with tempfile.TemporaryDirectory() as work:
        cases, out = Path(work, "cases.npz"), Path(work, "out.json")
        meta = json.dumps({"features": features, "categorical": []})
        np.savez(cases, reference_0=reference, current_0=current, meta_0=meta)
        subprocess.run(
            [str(python), str(evidently_env.WORKER), str(cases), str(out), "--repeat", str(repeat)],
            check=True,
        )
        theirs = json.loads(out.read_text())[0]

    same_tests = all(d.test == theirs["columns"][d.feature]["test"] for d in ours)
    their_drifted = {
        name: column["score"] >= column["threshold"]
        if column["test"] not in ("ks", "chisquare", "z")
        else column["score"] < column["threshold"]
        for name, column in theirs["columns"].items()
    }
    same_verdicts = all(d.drifted == their_drifted[d.feature] for d in ours)
    ours_dataset = dataset_drifted([d.drifted for d in ours])
    max_gap = max(abs(d.score - theirs["columns"][d.feature]["score"]) for d in ours)
    return {
        "rows": rows,
        "features": width,
        "tests": sorted({d.test for d in ours}),
        "drifted_features": sum(d.drifted for d in ours),
        "evidently_drifted_features": sum(their_drifted.values()),
        "dataset_drifted": ours_dataset,
        "evidently_dataset_drifted": theirs["dataset_drifted"],
        "same_tests": same_tests,
        "same_verdicts": same_verdicts and ours_dataset == theirs["dataset_drifted"],
        "max_score_difference": max_gap,
        "cascade_report_seconds": report_seconds,
        "cascade_prepare_reference_seconds": prepare_seconds,
        "evidently_seconds": theirs["seconds"],
        "speedup_per_report": theirs["seconds"] / report_seconds,
        "speedup_including_reference": theirs["seconds"] / (report_seconds + prepare_seconds),
    }


class _Source:
    def __init__(self, rows: np.ndarray, features: list[str]) -> None:
        self.rows, self.features = rows, features

    async def fetch(self, model: str, model_version: int) -> Reference:
        info = ReferenceInfo(model, model_version, "bench", "v1", tuple(self.features), len(self.rows))
        target = (self.rows[:, 0] > 0).astype(np.float64)
        return Reference(info, self.rows, target=target, task="classification")


def bench_events(events: int) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    features = [f"f{i:02d}" for i in range(30)]
    reference = rng.normal(size=(569, 30))
    payloads = [
        PredictionLogged(
            source="bench",
            subject="bench",
            model="bench",
            model_version=1,
            request_id=f"r{i}",
            features=features,
            inputs=rng.normal(size=(20, 30)).tolist(),
            outputs=rng.integers(0, 2, 20).astype(float).tolist(),
        ).model_dump_json()
        for i in range(events)
    ]

    decode_seconds, _ = best_of(1, lambda: [PredictionLogged.model_validate_json(p) for p in payloads])

    async def consume(store: MonitorStore, every: int) -> float:
        source = _Source(reference, features)
        core = MonitorCore(store, source, window_size=200, evaluate_every=every, p_value_threshold=0.05)
        await core.set_reference("bench", 1)
        started = time.perf_counter()
        for payload in payloads:
            event = PredictionLogged.model_validate_json(payload)
            await core.record_predictions(
                event.model,
                event.features,
                event.inputs,
                event.outputs,
                event.request_id,
                event.probabilities,
            )
        return time.perf_counter() - started

    figures: dict[str, Any] = {"events": events, "rows_per_event": 20}
    for name, every in (("with_reports", 50), ("window_only", 10**9)):
        with tempfile.TemporaryDirectory() as work:
            store = MonitorStore(Path(work))
            try:
                seconds = asyncio.run(consume(store, every))
                figures[f"{name}_reports"] = len(store.verdicts("bench", limit=10**6))
            finally:
                store.close()
        figures[f"{name}_events_per_second"] = events / seconds
    figures["decode_only_events_per_second"] = events / decode_seconds
    figures["seconds_per_report"] = (
        events / figures["with_reports_events_per_second"] - events / figures["window_only_events_per_second"]
    ) / max(figures["with_reports_reports"], 1)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--events", type=int, default=5000)
    args = parser.parse_args()

    report = bench_report(args.rows, args.features, args.repeat)
    rows, width = report["rows"], report["features"]
    print(f"Drift report: {rows}-row window x {width} features vs a {rows}-row reference")
    print(f"  tests used: {', '.join(report['tests'])}")
    print(
        f"  Cascade:   {report['cascade_report_seconds'] * 1000:8.2f} ms per report "
        f"(+ {report['cascade_prepare_reference_seconds'] * 1000:.2f} ms once per reference)"
    )
    print(f"  Evidently: {report['evidently_seconds'] * 1000:8.2f} ms (DataDriftPreset, Report.run + dict)")
    print(
        f"  speed-up: {report['speedup_per_report']:.1f}x per report, "
        f"{report['speedup_including_reference']:.1f}x including the reference preparation"
    )
    print(
        f"  verdicts: Cascade {report['drifted_features']} drifted features, dataset "
        f"{'DRIFTED' if report['dataset_drifted'] else 'stable'}; "
        f"Evidently {report['evidently_drifted_features']}, "
        f"{'DRIFTED' if report['evidently_dataset_drifted'] else 'stable'}; "
        f"same tests {report['same_tests']}, "
        f"same verdicts {report['same_verdicts']}, max score difference {report['max_score_difference']:.2e}"
    )
    events = bench_events(args.events)
    print(f"Prediction-log events ({events['events']} of {events['rows_per_event']} rows each, from JSON):")
    print(f"  baseline, JSON decoding alone:      {events['decode_only_events_per_second']:9,.0f} events/s")
    print(f"  decoded + appended to the window:   {events['window_only_events_per_second']:9,.0f} events/s")
    print(
        "  + a report every 50 rows (window 200 vs 569 reference rows, 30 exact KS p-values, "
        f"fsync'ed SQLite): {events['with_reports_events_per_second']:,.0f} events/s, "
        f"{events['seconds_per_report'] * 1000:.1f} ms per report ({events['with_reports_reports']} reports)"
    )
    print(json.dumps({"report": report, "events": events}))


if __name__ == "__main__":
    main()
