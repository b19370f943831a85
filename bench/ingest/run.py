"""Ingest throughput: validation + cleaning + versioning, in rows per second, and what appending costs.

    .venv/bin/python bench/ingest/run.py                 # 10k, 100k and 1M rows x 30 features
    .venv/bin/python bench/ingest/run.py --sizes 10000   # quicker

For each size, in a fresh subprocess (so peak memory is that size's alone), it times ingest's own
domain code on a Parquet batch of N rows x 30 numeric features plus an integer target: read the
Parquet bytes, `clean` (types, missing, NaN/inf, ranges, outliers by IQR with a declared schema,
labels, duplicates) and `IngestStore.append_batch` (dedupe against the dataset, one segment written
with fsync, the SQLite commit, the merged profile). The baseline, measured in the same run on the
same bytes, is plain pandas: read_parquet + drop_duplicates + to_parquet.

Then the cost of appending a 10k-row batch to a small dataset (10k rows) and to a large one (1M
rows, built from 100k-row batches), with the store reopened (cold: row hashes loaded once) and
warm, against the old design's cost of the same append (rewrite the whole version: read it,
concat, dedupe, write it), measured in the same run.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from cascade.services.ingest.cleaning import clean, read_parquet  # noqa: E402
from cascade.services.ingest.schema import Feature, Policy, Schema  # noqa: E402
from cascade.services.ingest.store import IngestStore  # noqa: E402

FEATURES = 30


def _batch(rows: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, FEATURES)), columns=[f"f{i}" for i in range(FEATURES)])
    frame["target"] = rng.integers(0, 2, size=rows)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _schema() -> Schema:
    features = tuple(Feature(f"f{i}", "numeric", min=-10, max=10) for i in range(FEATURES))
    return Schema(features, "target", "classification", Policy(out_of_range="clip", outliers="iqr"))


def _ours(data: bytes, root: Path, dataset: str = "bench", batch: str = "b1") -> float:
    store = IngestStore(root)
    start = time.perf_counter()
    cleaned = clean(read_parquet(data).frame, _schema())
    store.append_batch(
        dataset, _schema(), batch, cleaned.rows, cleaned.report(), cleaned.rejected, "bench", cleaned.hashes
    )
    seconds = time.perf_counter() - start
    store.close()
    return seconds


def _baseline(data: bytes, root: Path) -> float:
    start = time.perf_counter()
    frame = pd.read_parquet(io.BytesIO(data)).drop_duplicates()
    frame.to_parquet(root / "baseline.parquet", index=False)
    return time.perf_counter() - start


def _input_path(rows: int) -> Path:
    return REPO / "bench" / ".work" / f"ingest-{rows}.parquet"


def one(rows: int, mode: str) -> None:
    """Child process: one measurement, printed as JSON. It only reads the input's bytes before
    measuring, so the peak it reports is the batch's bytes plus the work."""
    data = _input_path(rows).read_bytes()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory(dir=REPO / "bench" / ".work") as tmp:
        seconds = _ours(data, Path(tmp)) if mode == "ours" else _baseline(data, Path(tmp))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_mib": peak / 1024, "added_mib": (peak - rss_before) / 1024}))


def _child(rows: int, mode: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--one", str(rows), "--mode", mode],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def append_costs() -> list[tuple[str, float, float, float]]:
    """(dataset, cold append s, warm append s, rewrite-everything baseline s)."""
    results = []
    small_batch = _batch(10_000, seed=99)
    for name, history in (("small (10k rows)", [10_000]), ("large (1M rows)", [100_000] * 10)):
        with tempfile.TemporaryDirectory(dir=REPO / "bench" / ".work") as tmp:
            root = Path(tmp)
            for index, rows in enumerate(history):
                _ours(_batch(rows, seed=1000 + index), root, batch=f"h{index}")
            cold = _ours(small_batch, root, batch="append-cold")  # a fresh store: hashes loaded once
            store = IngestStore(root)
            schema = _schema()
            head = store.head("bench") or ""
            cleaned = clean(read_parquet(_batch(10_000, seed=98)).frame, schema)
            store._history_hashes("bench", head)  # warm, as in a running service
            start = time.perf_counter()
            store.append_batch("bench", schema, "append-warm", cleaned.rows, cleaned.report(), [], "bench")
            warm = time.perf_counter() - start
            # The old design: every append rewrote the version with all rows.
            start = time.perf_counter()
            everything = pd.concat([store.load("bench", head), cleaned.rows], ignore_index=True)
            everything.drop_duplicates(ignore_index=True).to_parquet(root / "rewrite.parquet", index=False)
            rewrite = time.perf_counter() - start
            store.close()
        results.append((name, cold, warm, rewrite))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--no-append", action="store_true", help="skip the append-cost measurement")
    args = parser.parse_args()
    (REPO / "bench" / ".work").mkdir(parents=True, exist_ok=True)
    if args.one:
        one(args.one, args.mode)
        return

    print(f"{'rows':>9} {'ingest s':>9} {'rows/s':>11} {'peak MiB':>9} {'+MiB':>6} "
          f"{'pandas s':>9} {'rows/s':>11} {'+MiB':>6} {'time ratio':>10}")  # fmt: skip
    for rows in args.sizes:
        _input_path(rows).write_bytes(_batch(rows, seed=rows))
        ours, base = _child(rows, "ours"), _child(rows, "baseline")
        _input_path(rows).unlink()
        print(
            f"{rows:>9} {ours['seconds']:>9.3f} {rows / ours['seconds']:>11,.0f} {ours['peak_mib']:>9.0f}"
            f" {ours['added_mib']:>6.0f} {base['seconds']:>9.3f} {rows / base['seconds']:>11,.0f}"
            f" {base['added_mib']:>6.0f} {ours['seconds'] / base['seconds']:>9.1f}x"
        )
    if args.no_append:
        return
    print("\nappending a 10k-row batch:")
    print(f"{'to a dataset of':<18} {'cold s':>8} {'warm s':>8} {'rewrite-all s':>14} {'warm/rewrite':>13}")
    for name, cold, warm, rewrite in append_costs():
        print(f"{name:<18} {cold:>8.3f} {warm:>8.3f} {rewrite:>14.3f} {warm / rewrite:>12.2f}x")


if __name__ == "__main__":
    main()
