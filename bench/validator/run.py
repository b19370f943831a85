"""The validator's worst event-loop wait: how long a health check waits for its answer while a
validation runs, against the validation's own duration, in the same run.

    .venv/bin/python bench/validator/run.py                 # about 1 min
    .venv/bin/python bench/validator/run.py --sizes 2000x100 --repeats 3

Each size is ROWSxTREES: two random forests of TREES trees on ROWS rows of 20 features
(make_classification), exported the trainer's way; the candidate is judged against the champion,
so the validation builds four ONNX sessions, checks parity and times 200 one-row runs. The rig
(tests/validator/loop_rig.py) runs the validator core on this process's loop beside a real gRPC
health server; a blocking health client in another thread checks every 2 ms; the registry and a
one-dataset ingest serve from their own loop in a background thread.

Baseline, same run: the same validation with every `asyncio.to_thread` call run inline on the
loop, as the validator did before its CPU work moved off the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.validator.loop_rig import LoopWaits, validation_rig  # noqa: E402

T = TypeVar("T")


async def _inline(function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    return function(*args, **kwargs)


async def _runs(rows: int, trees: int, repeats: int) -> tuple[list[LoopWaits], list[LoopWaits]]:
    off_loop: list[LoopWaits] = []
    on_loop: list[LoopWaits] = []
    threaded = asyncio.to_thread
    async with validation_rig(rows=rows, trees=trees) as validate:
        await validate()  # warm-up
        for _ in range(repeats):  # interleaved, so both see the same machine
            off_loop.append(await validate())
            asyncio.to_thread = _inline  # type: ignore[assignment]
            try:
                on_loop.append(await validate())
            finally:
                asyncio.to_thread = threaded
    return off_loop, on_loop


def _row(label: str, runs: list[LoopWaits]) -> str:
    duration = statistics.median(w.validation_seconds for w in runs)
    worst = max(w.worst_wait for w in runs)
    answered = statistics.median(w.answered for w in runs)
    median_wait = statistics.median(w.median_wait for w in runs)
    return (
        f"| {label} | {duration * 1000:.0f} | {worst * 1000:.1f} | {worst / duration:.2f} "
        f"| {median_wait * 1000:.2f} | {answered:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["2000x100", "10000x100", "10000x300"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(
        "| rows x trees, where the work runs | validation (ms, median) | worst check wait (ms) "
        "| worst / validation | median wait (ms) | checks answered during it (median) |"
    )
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        rows, trees = (int(part) for part in size.split("x"))
        off_loop, on_loop = asyncio.run(_runs(rows, trees, args.repeats))
        print(_row(f"{rows} x {trees}, worker thread", off_loop))
        print(_row(f"{rows} x {trees}, on the loop (before)", on_loop))


if __name__ == "__main__":
    main()
