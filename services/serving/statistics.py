"""Triton-style inference statistics per model version: counts and cumulative nanoseconds.

Updated on the event loop only (no locks): one `VersionStatistics` per (model, version), with plain
integer fields that ModelStatistics copies into Triton's messages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["InferenceStatistics", "VersionStatistics"]


@dataclass
class VersionStatistics:
    inference_count: int = 0  # rows inferred (Triton: inferences, each batch row counting once)
    execution_count: int = 0  # model executions (session runs)
    last_inference_ms: int = 0  # ms since the epoch
    success_count: int = 0
    success_ns: int = 0  # whole request, decoding and encoding included
    fail_count: int = 0
    fail_ns: int = 0
    compute_input_ns: int = 0  # decoding and checking the inputs
    compute_infer_ns: int = 0  # session.run
    compute_output_ns: int = 0  # encoding the response


class InferenceStatistics:
    def __init__(self) -> None:
        self._by_version: dict[tuple[str, int], VersionStatistics] = {}

    def of(self, model: str, version: int) -> VersionStatistics:
        """The statistics of one version (zeros if it has served nothing yet)."""
        stats = self._by_version.get((model, version))
        if stats is None:
            stats = self._by_version[model, version] = VersionStatistics()
        return stats

    def success(
        self,
        model: str,
        version: int,
        rows: int,
        started_ns: int,
        decoded_ns: int,
        inferred_ns: int,
        executions: int = 1,  # 0 for a request whose batched session run another request counts
    ) -> None:
        now = time.perf_counter_ns()
        stats = self.of(model, version)
        stats.inference_count += rows
        stats.execution_count += executions
        stats.last_inference_ms = time.time_ns() // 1_000_000
        stats.success_count += 1
        stats.success_ns += now - started_ns
        stats.compute_input_ns += decoded_ns - started_ns
        stats.compute_infer_ns += inferred_ns - decoded_ns
        stats.compute_output_ns += now - inferred_ns

    def failure(self, model: str, version: int, started_ns: int) -> None:
        stats = self.of(model, version)
        stats.fail_count += 1
        stats.fail_ns += time.perf_counter_ns() - started_ns
