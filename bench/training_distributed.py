"""One hyperparameter study on 1, 2 and 4 trainer processes, and peak memory whole-frame vs segment-wise.

    flock /tmp/cascade-heavy.lock .venv/bin/python bench/training_distributed.py

Part 1: one study of TRIALS random-search trials (gradient boosting on make_classification,
ROWS x 30, 3-fold CV; the points fixed in the study's slots from the spec's seed, so every run does
the same trials) in shared SQLite storage (services/trainer/distributed.py): one owner process
(fills the slots, runs trials, refits and exports the best) and N-1 joiners, all started at once
(spawn). Wall time from start to the owner's result, and the speed-up against 1 process.

Part 2: peak RSS of a fresh process fitting a ridge pipeline on a Parquet dataset version of R rows
x 30 features: the whole frame (read_parquet, then fit) against segment by segment
(services/trainer/segments.py: Arrow record batches of 16,384 rows, sufficient statistics).
"""

from __future__ import annotations

import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import make_classification

from cascade.services.trainer.attribution import ExplainLimits
from cascade.services.trainer.distributed import SharedStudy, StudyStorage, study_name
from cascade.training_spec import TrainingSpec

ROWS = 12_000
TRIALS = 8
PROCESSES = (1, 2, 4)
MEMORY_ROWS = (10_000, 50_000, 200_000, 1_000_000)
FEATURES = [f"f{i}" for i in range(30)]
SPEC = TrainingSpec(strategy="random", estimators=["gradient_boosting"], max_trials=TRIALS, max_seconds=3600)


def _frame(rows: int) -> pd.DataFrame:
    x, y = make_classification(n_samples=rows, n_features=30, n_informative=10, random_state=0)
    return pd.DataFrame(x, columns=FEATURES).assign(target=y)


def _participant(url: str, name: str, worker: str, owner: bool) -> int:
    from cascade.services.trainer.training import join_study, train

    frame = _frame(ROWS)
    shared = SharedStudy(StudyStorage(url, poll_seconds=0.2), name, worker, owner=owner)
    if owner:
        no_attribution = ExplainLimits(max_evaluations=1)  # the search is measured, not the explanation
        train(frame, FEATURES, "target", "classification", spec=SPEC, shared=shared, explain=no_attribution)
        return 0
    return join_study(frame, FEATURES, "target", "classification", SPEC, shared)


def one_study(processes: int, directory: Path) -> float:
    url = f"sqlite:///{directory / f'study-{processes}.db'}"
    name = study_name("bench", f"processes-{processes}")
    context = multiprocessing.get_context("spawn")
    started = time.perf_counter()
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        owner = pool.submit(_participant, url, name, "owner", True)
        joiners = [pool.submit(_participant, url, name, f"joiner-{i}", False) for i in range(processes - 1)]
        owner.result()
        ran = [j.result() for j in joiners]
    elapsed = time.perf_counter() - started
    print(f"  {processes} process(es): {elapsed:7.1f} s   (joiners ran {ran} of {TRIALS} trials)", flush=True)
    return elapsed


def _peak_rss(path: str, segment_wise: bool) -> tuple[float, float]:
    """(RSS high-water mark after imports, after the fit) in MiB, of this fresh process."""
    from cascade.services.trainer.segments import fit_segments, parquet_segments
    from cascade.services.trainer.training import build_pipeline
    from cascade.splits import holdout_mask

    before = _high_water_mib()
    if segment_wise:
        fit_segments("ridge", {"alpha": 1.0}, parquet_segments(Path(path), FEATURES, "target", 0.2))
    else:
        frame = pd.read_parquet(path)
        kept = frame[~holdout_mask(frame[[*FEATURES, "target"]], 0.2)]
        x = kept[FEATURES].to_numpy(dtype=np.float32)
        build_pipeline("ridge", "regression", {"alpha": 1.0}, 42).fit(x, kept["target"].to_numpy())
    return before, _high_water_mib()


def _high_water_mib() -> float:
    """This process's peak RSS. Not getrusage's ru_maxrss: Linux keeps that across execve, so a
    spawned child would report its parent's peak (the parent builds the largest frame)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def memory(directory: Path) -> None:
    context = multiprocessing.get_context("spawn")
    columns = ("rows", "parquet MiB", "in memory MiB", "whole-frame peak", "segment-wise peak")
    print("{:>9} {:>11} {:>13} {:>17} {:>18}".format(*columns))
    for rows in MEMORY_ROWS:
        path = directory / f"version-{rows}.parquet"
        frame = _frame(rows)
        frame.to_parquet(path, row_group_size=16_384)
        in_memory = frame.memory_usage(deep=True).sum() / 2**20
        del frame
        peaks = []
        for segment_wise in (False, True):
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                before, after = pool.submit(_peak_rss, str(path), segment_wise).result()
            peaks.append(f"{after:.0f} (+{after - before:.0f})")
        size = path.stat().st_size / 2**20
        print(f"{rows:>9} {size:>11.1f} {in_memory:>13.1f} {peaks[0]:>17} {peaks[1]:>18}", flush=True)


def main() -> None:
    print(f"python {sys.version.split()[0]}, {multiprocessing.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        print(f"One study: {TRIALS} trials of gradient boosting, {ROWS} rows x 30, 3-fold CV, SQLite storage")
        times = {n: one_study(n, directory) for n in PROCESSES}
        for n, seconds in times.items():
            print(f"  speed-up on {n}: {times[1] / seconds:.2f}x")
        print("Peak RSS (MiB; in brackets: above the process after its imports), ridge fit:")
        memory(directory)


if __name__ == "__main__":
    main()
