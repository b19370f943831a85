"""Drift-detection benchmark: the decision itself, for Cascade (calibrated mode), Evidently's
defaults and NannyML's univariate drift, on the same seeded streams.

    .venv/bin/python bench/monitor/detection.py [--scale 1] [--windows 100,500,2000,10000]
                                                [--datasets diabetes,breast_cancer] [--no-nannyml]

Streams, from sklearn's bundled data (no download):
- diabetes: real rows resampled with replacement, values untouched (heavy ties in `s4`, binary
  `sex`), plus `bp_band`, a categorical column: `bp` binned at its quintiles (5 categories);
- breast_cancer: real rows resampled with a jitter of 5% of each feature's std (30 continuous
  features; synthetic from real, so a reference of any size has no duplicated rows).
The reference has 5,000 rows for windows of 100 and 500, 20,000 for 2,000 and 50,000 for 10,000
(so NannyML gets at least five chunks of the window size); every stream row is fresh. Streams
reach the detectors through float32, as serving logs them, and so does every detector's reference
(like with like, for all three).

Conditions: unshifted; mean shifts of 0.25, 0.5 and 1 std in 3 features; those 3 features'
spread x1.5; a categorical mix change (diabetes: 30% of rows get the top `bp_band`, 30% get the
higher `sex` value). Windows are tumbling; a shifted stream changes at its first row.
- false-alarm rate: alarmed reports / reports, on unshifted streams;
- detection rate: alarmed reports / reports, on shifted streams;
- delay: rows from the change to the end of the first alarmed window (median over streams; "-"
  when no stream alarmed within its windows).

Detectors and their report-level decision:
- Cascade: `calibrate(reference, window)` then `evaluate(...)` (any feature over its calibrated
  threshold; per-report false-alarm rate 1%);
- Evidently 0.7.23 DataDriftPreset defaults: dataset drift when half of the columns drift. Its
  verdicts come from Cascade's evidently mode, which tests/monitor/test_evidently_parity.py checks
  against Evidently itself; this run also replays `--evidently-checks` windows per stream kind
  through real Evidently (its own venv) and reports the agreement;
- NannyML 0.13.1 UnivariateDriftCalculator defaults (Jensen-Shannon, thresholds at mean + 3 std of
  the reference's chunks; its own venv): an alarm when any feature alerts (NannyML has no
  dataset-level rule for univariate drift).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.monitor import evidently_env, nannyml_env  # noqa: E402
from cascade.services.monitor.drift import CATEGORICAL, PreparedReference, calibrate, evaluate  # noqa: E402

Rows = np.ndarray[Any, np.dtype[np.float64]]
DETECTORS = ("cascade", "evidently", "evidently_matched", "nannyml")
SHIFTED_FEATURES = {
    "diabetes": ["bmi", "bp", "s5"],
    "breast_cancer": ["mean radius", "texture error", "worst smoothness"],
}


@dataclass(frozen=True)
class Population:
    """Draws rows from a distribution built from a bundled dataset."""

    name: str
    features: list[str]
    categorical: list[str]
    draw: Callable[[np.random.Generator, int], Rows]
    std: Rows


def diabetes() -> Population:
    data = load_diabetes()
    features = [*data.feature_names, "bp_band"]
    bp = data.data[:, list(data.feature_names).index("bp")]
    edges = np.quantile(bp, [0.2, 0.4, 0.6, 0.8])
    rows = np.column_stack([data.data, np.searchsorted(edges, bp, "right").astype(np.float64)])

    def draw(rng: np.random.Generator, count: int) -> Rows:
        return rows[rng.integers(0, len(rows), count)]

    return Population("diabetes", features, ["bp_band"], draw, rows.std(axis=0))


def breast_cancer() -> Population:
    data = load_breast_cancer()
    std = data.data.std(axis=0)

    def draw(rng: np.random.Generator, count: int) -> Rows:
        rows = data.data[rng.integers(0, len(data.data), count)]
        return rows + rng.normal(scale=0.05 * std, size=rows.shape)

    return Population("breast_cancer", [str(name) for name in data.feature_names], [], draw, std)


POPULATIONS = {"diabetes": diabetes, "breast_cancer": breast_cancer}


def shifted(population: Population, condition: str, rows: Rows, rng: np.random.Generator) -> Rows:
    """`rows` under `condition` (see the module's doc)."""
    rows = rows.copy()
    moved = [population.features.index(name) for name in SHIFTED_FEATURES[population.name]]
    if condition.startswith("mean +"):
        rows[:, moved] += float(condition.removeprefix("mean +").split(maxsplit=1)[0]) * population.std[moved]
    elif condition == "scale x1.5":
        centre = rows[:, moved].mean(axis=0)
        rows[:, moved] = centre + 1.5 * (rows[:, moved] - centre)
    elif condition == "category mix":
        band, sex = population.features.index("bp_band"), population.features.index("sex")
        rows[rng.random(len(rows)) < 0.3, band] = 4.0
        rows[rng.random(len(rows)) < 0.3, sex] = rows[:, sex].max()
    elif condition != "unshifted":
        raise ValueError(condition)
    return rows


def conditions(population: Population) -> list[str]:
    names = ["unshifted", "mean +0.25 std", "mean +0.5 std", "mean +1 std", "scale x1.5"]
    return names + (["category mix"] if population.categorical else [])


def as_logged(rows: Rows) -> Rows:
    return rows.astype(np.float32).astype(np.float64)


@dataclass
class Stream:
    """Windows of one condition: `streams` streams of `per_stream` tumbling windows each."""

    condition: str
    window: int
    windows: list[Rows]
    per_stream: int
    alarms: dict[str, list[bool]] = field(default_factory=dict)
    evidently_shares: list[float] = field(default_factory=list)  # of drifted features, per window


def plan(window: int, scale: float) -> tuple[int, int, int]:
    """(unshifted reports, shifted streams, windows per shifted stream) for a window size."""
    unshifted = {100: 400, 500: 200, 2000: 100, 10_000: 40}.get(window, 100)
    streams = 10 if window < 10_000 else 4
    return max(1, round(unshifted * scale)), max(1, round(streams * scale)), 4


def reference_rows(window: int) -> int:
    """At least ten of NannyML's chunks of the window size (five for the largest windows)."""
    return max(5000, min(10 * window, 50_000))


def build_streams(population: Population, window: int, scale: float, seed: int) -> tuple[Rows, list[Stream]]:
    rng = np.random.default_rng(seed)
    reference = as_logged(population.draw(rng, reference_rows(window)))
    unshifted, streams, per_stream = plan(window, scale)
    result = []
    for condition in conditions(population):
        count = unshifted if condition == "unshifted" else streams * per_stream
        length = 1 if condition == "unshifted" else per_stream
        windows = [
            as_logged(shifted(population, condition, population.draw(rng, window), rng)) for _ in range(count)
        ]
        result.append(Stream(condition, window, windows, length))
    return reference, result


def run_cascade(population: Population, reference: Rows, streams: list[Stream]) -> float:
    kinds = {name: CATEGORICAL for name in population.categorical}
    prepared = PreparedReference.of(reference, population.features, kinds)
    started = time.perf_counter()
    calibration = calibrate(prepared, streams[0].window)
    seconds = time.perf_counter() - started
    for stream in streams:
        stream.alarms["cascade"] = [evaluate(prepared, calibration, w).drifted for w in stream.windows]
        verdicts = [evaluate(prepared, calibration, w, mode="evidently") for w in stream.windows]
        stream.alarms["evidently"] = [verdict.drifted for verdict in verdicts]
        stream.evidently_shares = [float(np.mean([f.drifted for f in v.features])) for v in verdicts]
    match_evidently(streams)
    return seconds


def match_evidently(streams: list[Stream]) -> None:
    """Evidently's per-feature verdicts with the dataset rule "share of drifted features >= s",
    s chosen on the unshifted stream itself (in-sample, so in Evidently's favour) as the smallest
    share whose false-alarm rate is at most max(Cascade's measured rate, 1%)."""
    unshifted = next(stream for stream in streams if stream.condition == "unshifted")
    allowed = max(float(np.mean(unshifted.alarms["cascade"])), 0.01)
    shares = np.asarray(unshifted.evidently_shares)
    candidates = [*sorted({*shares.tolist(), 1.0}), math.inf]
    cut = next(share for share in candidates if share > 0 and np.mean(shares >= share) <= allowed)
    for stream in streams:
        stream.alarms["evidently_matched"] = [share >= cut for share in stream.evidently_shares]


def run_nannyml(population: Population, cases: list[tuple[Rows, list[Stream]]]) -> None:
    python = nannyml_env.ensure()
    with tempfile.TemporaryDirectory() as work:
        arrays: dict[str, Any] = {}
        flat = [(reference, stream) for reference, streams in cases for stream in streams]
        for index, (reference, stream) in enumerate(flat):
            arrays[f"reference_{index}"] = reference
            arrays[f"stream_{index}"] = np.concatenate(stream.windows)
            arrays[f"meta_{index}"] = json.dumps(
                {
                    "features": population.features,
                    "categorical": population.categorical,
                    "window": stream.window,
                }
            )
        np.savez(Path(work, "cases.npz"), **arrays)
        subprocess.run(
            [str(python), str(nannyml_env.WORKER), f"{work}/cases.npz", f"{work}/out.json"],
            check=True,
            env={**os.environ, "NML_DISABLE_USAGE_LOGGING": "1"},  # no analytics calls to segment.io
        )
        results = json.loads(Path(work, "out.json").read_text())
    for (_, stream), result in zip(flat, results, strict=True):
        alarms = result["alarms"]
        if len(alarms) != len(stream.windows):
            raise RuntimeError(f"NannyML judged {len(alarms)} chunks for {len(stream.windows)} windows")
        stream.alarms["nannyml"] = alarms


def check_evidently(
    population: Population, cases: list[tuple[Rows, list[Stream]]], per_kind: int
) -> tuple[int, int]:
    """Replays the first `per_kind` windows of each stream through real Evidently: (agreeing, total)."""
    if per_kind <= 0:
        return 0, 0
    python = evidently_env.ensure()
    chosen = [
        (reference, stream, index)
        for reference, streams in cases
        for stream in streams
        for index in range(min(per_kind, len(stream.windows)))
        if stream.window <= 500  # Evidently takes seconds per report on the larger ones
    ]
    with tempfile.TemporaryDirectory() as work:
        arrays: dict[str, Any] = {}
        meta = json.dumps({"features": population.features, "categorical": population.categorical})
        for number, (reference, stream, index) in enumerate(chosen):
            arrays[f"reference_{number}"], arrays[f"current_{number}"] = reference, stream.windows[index]
            arrays[f"meta_{number}"] = meta
        np.savez(Path(work, "cases.npz"), **arrays)
        subprocess.run(
            [str(python), str(evidently_env.WORKER), f"{work}/cases.npz", f"{work}/out.json"], check=True
        )
        results = json.loads(Path(work, "out.json").read_text())
    agreeing = sum(
        result["dataset_drifted"] == stream.alarms["evidently"][index]
        for (_, stream, index), result in zip(chosen, results, strict=True)
    )
    return agreeing, len(chosen)


def summarise(stream: Stream, detector: str) -> dict[str, Any]:
    alarms = stream.alarms.get(detector)
    if alarms is None:
        return {}
    figures: dict[str, Any] = {"reports": len(alarms), "rate": sum(alarms) / len(alarms)}
    if stream.condition != "unshifted":
        delays, within_two = [], 0
        for start in range(0, len(alarms), stream.per_stream):
            run = alarms[start : start + stream.per_stream]
            if any(run):
                first = run.index(True) + 1
                delays.append(first * stream.window)
                within_two += first <= 2
        streams = len(alarms) // stream.per_stream
        figures["median_delay_rows"] = statistics.median(delays) if delays else None
        figures["detected_within_two_windows"] = within_two / streams
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiplies the number of reports and streams"
    )
    parser.add_argument("--windows", default="100,500,2000,10000")
    parser.add_argument("--datasets", default="diabetes,breast_cancer")
    parser.add_argument("--no-nannyml", action="store_true")
    parser.add_argument(
        "--evidently-checks", type=int, default=1, help="windows per stream replayed in Evidently"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    started = time.perf_counter()
    table: list[dict[str, Any]] = []
    agreement = [0, 0]
    for name in args.datasets.split(","):
        population = POPULATIONS[name]()
        cases = []
        for window in (int(size) for size in args.windows.split(",")):
            reference, streams = build_streams(population, window, args.scale, args.seed + window)
            calibration_seconds = run_cascade(population, reference, streams)
            print(f"{name} window {window}: calibrated in {calibration_seconds:.1f} s", file=sys.stderr)
            cases.append((reference, streams))
        if not args.no_nannyml:
            run_nannyml(population, cases)
        agreeing, checked = check_evidently(population, cases, args.evidently_checks)
        agreement[0] += agreeing
        agreement[1] += checked
        for reference, streams in cases:
            for stream in streams:
                row = {
                    "dataset": name,
                    "window": stream.window,
                    "condition": stream.condition,
                    "reference_rows": len(reference),
                }
                for detector in DETECTORS:
                    row[detector] = summarise(stream, detector)
                table.append(row)
    print_table(table)
    print(
        f"Evidently verdicts replayed in Evidently 0.7.23: {agreement[0]} of {agreement[1]} agree "
        "with Cascade's evidently mode"
    )
    print(f"total {time.perf_counter() - started:.0f} s")
    print(json.dumps({"rows": table, "evidently_agreement": agreement}))


def print_table(table: list[dict[str, Any]]) -> None:
    def cell(figures: dict[str, Any], shifted_: bool) -> str:
        if not figures:
            return "n/a"
        text = f"{figures['rate']:.1%} of {figures['reports']}"
        if shifted_:
            delay = figures["median_delay_rows"]
            text += f", delay {delay:,.0f}" if delay is not None else ", delay -"
            text += f", ≤2 windows {figures['detected_within_two_windows']:.0%}"
        return text

    print(
        "| dataset | window | condition | Cascade (calibrated) | Evidently defaults "
        "| Evidently, rule matched to Cascade's false alarms | NannyML defaults |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in table:
        shifted_ = row["condition"] != "unshifted"
        cells = " | ".join(cell(row[detector], shifted_) for detector in DETECTORS)
        print(f"| {row['dataset']} | {row['window']:,} | {row['condition']} | {cells} |")


if __name__ == "__main__":
    main()
