"""Time from uploading a batch to its model version serving, over several cascades.

    .venv/bin/python bench/cascade_latency.py --runs 5

Starts its own stack (ports 39xxx, home bench/.work/cascade), uploads breast_cancer in batches
(40% first, then equal slices) and, for each batch, measures the wall time from the upload to
serving answering ModelReady for the new version. It splits that time into training (the
trainer's own measurement, recorded in the registry) and the rest of the cascade, and prints the
ratio to a baseline measured in the same run: the same training called in-process on the same rows.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from sklearn.datasets import load_breast_cancer

from cascade.cli.client import ingest_file
from cascade.cli.demo import serves
from cascade.services.trainer.training import train
from cascade.stack import Stack, StackConfig
from cascade.stubs.cascade.registry.v1 import registry_pb2, registry_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
PORTS = {
    "ingest": 19051,
    "trainer": 19052,
    "validator": 19053,
    "registry": 19054,
    "monitor": 19055,
    "serving": 19001,
}
MODEL = "bench_breast_cancer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="cascades to time (batches after the first)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one cascade")
    args = parser.parse_args()

    home = REPO / "bench" / ".work" / "cascade"
    shutil.rmtree(home, ignore_errors=True)
    stack = Stack(
        StackConfig(
            home=home,
            kafka_port=19092,
            controller_port=19093,
            topic_prefix="bench",
            ports=PORTS,
            traces=False,
            metrics_ports={},  # no /metrics: keeps clear of a `cascade up` stack on this machine
        )
    )
    frame = load_breast_cancer(as_frame=True).frame.sample(frac=1.0, random_state=11).reset_index(drop=True)
    first = int(len(frame) * 0.4)
    edges = np.linspace(first, len(frame), args.runs + 1).astype(int)
    batches = [frame.iloc[:first]] + [frame.iloc[a:b] for a, b in itertools.pairwise(edges)]
    features = [c for c in frame.columns if c != "target"]

    rows: list[tuple[int, int, float, float, float]] = []
    try:
        print("starting the stack ...", flush=True)
        stack.start(timeout=180)
        workdir = Path(tempfile.mkdtemp())
        with grpc.insecure_channel(stack.address("registry")) as channel:
            registry = registry_pb2_grpc.RegistryServiceStub(channel)
            for number, batch in enumerate(batches, start=1):
                path = workdir / f"batch{number}.csv"
                batch.to_csv(path, index=False)
                started = time.perf_counter()
                ingest_file(stack.address("ingest"), path, MODEL, security=stack.client_security)
                deadline = started + args.timeout
                while not serves(stack.address("serving"), stack.client_security, MODEL, str(number)):
                    if time.perf_counter() > deadline:
                        raise SystemExit(f"version {number} did not serve within {args.timeout:g} s")
                    time.sleep(0.01)
                elapsed = time.perf_counter() - started
                version = registry.GetModelVersion(
                    registry_pb2.GetModelVersionRequest(model=MODEL, version=number)
                )
                seen = frame.iloc[: first if number == 1 else edges[number - 1]]
                baseline_started = time.perf_counter()
                train(seen, features, "target", "classification", seed=42, folds=3, holdout=0.2)
                baseline = time.perf_counter() - baseline_started
                rows.append((number, len(seen), elapsed, version.run.train_seconds, baseline))
                print(
                    f"version {number}: {len(seen)} rows, upload→serving {elapsed:.3f} s, "
                    f"training {version.run.train_seconds:.3f} s, in-process training {baseline:.3f} s",
                    flush=True,
                )
    finally:
        stack.stop()

    timed = rows[1:] or rows  # the first cascade also pays for topic creation and consumer joins
    median_total = statistics.median(r[2] for r in timed)
    median_train = statistics.median(r[3] for r in timed)
    median_baseline = statistics.median(r[4] for r in timed)
    print()
    print(f"median upload→serving over versions 2..{len(rows)}: {median_total:.3f} s")
    print(f"median training inside it: {median_train:.3f} s ({100 * median_train / median_total:.0f}%)")
    print(
        f"baseline, same training in-process: {median_baseline:.3f} s; ratio cascade/baseline: "
        f"{median_total / median_baseline:.1f}x"
    )
    print(f"first cascade (cold topics and consumer groups): {rows[0][2]:.3f} s")


if __name__ == "__main__":
    main()
