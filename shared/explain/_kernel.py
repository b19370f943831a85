"""Model-agnostic KernelSHAP (Lundberg & Lee 2017) over the ONNX session, for any graph the exact
paths cannot read.

The value of a coalition S of features is the model's mean output over the background rows with the
features in S set to the explained row's values (interventional: features outside S keep each
background row's own values). Shapley values are the solution of a weighted least-squares fit of
those coalition values, with the Shapley kernel as weights, under the efficiency constraint
sum(phi) = f(x) - E[f(background)], which is eliminated before solving so that additivity holds to
rounding, whatever the sample.

- Few features (2^M - 2 coalitions within the sample size): every coalition is enumerated, and the
  fit returns the exact Shapley values.
- Otherwise coalitions are chosen as the shap package does: the subset sizes with the most kernel
  weight (1 and M-1, then 2 and M-2, ...) are enumerated whole while the sample size allows, and the
  rest is drawn from the kernel's size distribution, in complementary pairs, by a fixed seed.

Features whose value in the row equals every background row's cannot move the output (a dummy
player's Shapley value is 0), so they get exactly 0 and are left out of the fit, as shap does.

The design of a fit depends only on the number M of varying features, so the masks and the
least-squares projection are built once per M and reused for every row (one matrix product a row).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cascade.explain._model import OnnxModel
from cascade.explain._types import ExplainBudgetExceeded, ExplainDeadlineExceeded

__all__ = ["KernelShap", "default_samples"]

Floats = NDArray[np.float64]


def default_samples(n_features: int) -> int:
    """Coalitions sampled per row when more than that many exist: shap's own "auto" choice."""
    return 2 * n_features + 2048


@dataclass(frozen=True)
class _Design:
    masks: NDArray[np.bool_]  # [K, M] which varying features take the row's values
    projection: Floats  # [M - 1, K] the constrained weighted least-squares solution operator
    exact: bool


def _exact_masks(m: int) -> tuple[NDArray[np.bool_], Floats]:
    masks = ((np.arange(1, 2**m - 1)[:, None] >> np.arange(m)[None, :]) & 1).astype(bool)
    sizes = masks.sum(axis=1)
    binomials = np.array([math.comb(m, int(s)) for s in sizes], dtype=np.float64)
    weights = (m - 1) / (binomials * sizes * (m - sizes))
    return masks, weights


class _Coalitions:
    """Masks with their kernel weights; a coalition drawn again adds its weight to the first."""

    def __init__(self) -> None:
        self.index: dict[bytes, int] = {}
        self.masks: list[NDArray[np.bool_]] = []
        self.weights: list[float] = []

    def add(self, mask: NDArray[np.bool_], weight: float) -> int:
        """Adds `mask` (or its weight); how many new coalitions that made (0 or 1)."""
        key = mask.tobytes()
        if key in self.index:
            self.weights[self.index[key]] += weight
            return 0
        self.index[key] = len(self.masks)
        self.masks.append(mask)
        self.weights.append(weight)
        return 1


def _size_weights(m: int) -> tuple[Floats, int]:
    """The kernel's weight of each subset size 1..ceil((M-1)/2) (a size and its complement counted
    together), and how many of those sizes have a distinct complement size."""
    n_sizes = math.ceil((m - 1) / 2)
    n_paired = math.floor((m - 1) / 2)
    weights = np.array([(m - 1) / (s * (m - s)) for s in range(1, n_sizes + 1)], dtype=np.float64)
    weights[:n_paired] *= 2
    return weights / weights.sum(), n_paired


def _sampled_masks(m: int, samples: int, seed: int) -> tuple[NDArray[np.bool_], Floats]:
    """shap's KernelExplainer sampling, deterministic by `seed`: whole sizes first, then draws."""
    size_weights, n_paired = _size_weights(m)
    coalitions = _Coalitions()
    left = samples
    remaining = size_weights.copy()
    full_sizes = 0
    for size in range(1, len(size_weights) + 1):
        paired = size <= n_paired
        subsets = math.comb(m, size) * (2 if paired else 1)
        if left * remaining[size - 1] / subsets < 1.0 - 1e-8:
            break
        full_sizes += 1
        left -= subsets
        if remaining[size - 1] < 1.0:
            remaining /= 1.0 - remaining[size - 1]
        weight = size_weights[size - 1] / math.comb(m, size) / (2 if paired else 1)
        for members in itertools.combinations(range(m), size):
            mask = np.zeros(m, dtype=bool)
            mask[list(members)] = True
            coalitions.add(mask, weight)
            if paired:
                coalitions.add(~mask, weight)
    fixed = len(coalitions.masks)
    if full_sizes < len(size_weights) and left > 0:
        _draw(coalitions, m, left, size_weights, n_paired, full_sizes, np.random.default_rng(seed))
        drawn = np.array(coalitions.weights[fixed:], dtype=np.float64)
        # The drawn coalitions share the kernel weight of the sizes not enumerated.
        coalitions.weights[fixed:] = list(drawn * size_weights[full_sizes:].sum() / drawn.sum())
    return np.array(coalitions.masks, dtype=bool), np.array(coalitions.weights, dtype=np.float64)


def _draw(
    coalitions: _Coalitions,
    m: int,
    left: int,
    size_weights: Floats,
    n_paired: int,
    full_sizes: int,
    rng: np.random.Generator,
) -> None:
    """Adds up to `left` coalitions of the sizes not enumerated, drawn by the kernel's weights, each
    with its complement."""
    draw = size_weights.copy()
    draw[:n_paired] /= 2  # each draw of a paired size adds two coalitions
    draw = draw[full_sizes:] / draw[full_sizes:].sum()
    for size in rng.choice(len(draw), 4 * left, p=draw) + full_sizes + 1:
        if left <= 0:
            break
        mask = np.zeros(m, dtype=bool)
        mask[rng.permutation(m)[:size]] = True
        left -= coalitions.add(mask, 1.0)
        if size <= n_paired:
            left -= coalitions.add(~mask, 1.0)


def _design(m: int, samples: int, seed: int) -> _Design:
    exact = (1 << m) - 2 <= samples
    masks, weights = _exact_masks(m) if exact else _sampled_masks(m, samples, seed)
    # Eliminate the last feature with the efficiency constraint: phi_last = total - sum(phi_rest).
    last = masks[:, -1:].astype(np.float64)
    design = masks[:, :-1].astype(np.float64) - last
    root = np.sqrt(weights)[:, None]
    projection = np.asarray(np.linalg.pinv(design * root) * root.T, dtype=np.float64)
    return _Design(masks=masks, projection=projection, exact=exact)


class KernelShap:
    """KernelSHAP of one model against fixed background rows (float32 [B, F])."""

    def __init__(
        self,
        model: OnnxModel,
        background: NDArray[np.float32],
        background_scores: Floats,
        samples: int,
        seed: int,
    ) -> None:
        self.model = model
        self.background = background
        self.base = background_scores.mean(axis=0)  # [C]
        self.samples = samples
        self.seed = seed
        self._designs: dict[int, _Design] = {}

    def varying(self, rows: NDArray[np.float32]) -> NDArray[np.bool_]:
        """[N, F]: which features of each row differ from some background row."""
        return np.asarray((rows[:, None, :] != self.background[None, :, :]).any(axis=1))

    def coalitions(self, n_varying: int) -> int:
        if n_varying <= 1:
            return 0
        return min((1 << n_varying) - 2, self.samples)

    def evaluations_needed(self, rows: NDArray[np.float32]) -> int:
        counts = self.varying(rows).sum(axis=1)
        return sum(self.coalitions(int(m)) for m in counts) * len(self.background)

    def design(self, m: int) -> _Design:
        if m not in self._designs:
            self._designs[m] = _design(m, self.samples, self.seed)
        return self._designs[m]

    def explain(
        self,
        rows: NDArray[np.float32],
        row_scores: Floats,
        classes: NDArray[np.int64],
        max_evaluations: int | None,
        deadline: float | None,
    ) -> tuple[Floats, Floats, int]:
        """(base values [N], attributions [N, F], model rows evaluated) of each row's class column
        (`classes`, 0 for a regressor); `row_scores` [N, C] are the model's outputs for `rows`."""
        needed = self.evaluations_needed(rows)
        if max_evaluations is not None and needed > max_evaluations:
            raise ExplainBudgetExceeded(
                f"KernelSHAP needs {needed} evaluations ({len(rows)} rows, up to "
                f"{self.coalitions(rows.shape[1])} coalitions x {len(self.background)} background rows "
                f"each), budget {max_evaluations}"
            )
        varying = self.varying(rows)
        attributions = np.zeros(rows.shape, dtype=np.float64)
        base_values = self.base[classes]
        evaluations = 0
        for index, row in enumerate(rows):
            if deadline is not None and time.monotonic() > deadline:
                raise ExplainDeadlineExceeded(
                    f"the deadline passed after {index} of {len(rows)} rows (KernelSHAP)"
                )
            columns = np.flatnonzero(varying[index])
            total = row_scores[index, classes[index]] - base_values[index]
            if len(columns) == 0:
                continue
            if len(columns) == 1:
                attributions[index, columns[0]] = total
                continue
            design = self.design(len(columns))
            full = np.ones((len(design.masks), rows.shape[1]), dtype=bool)
            full[:, columns] = design.masks
            synthetic = np.where(full[:, None, :], row[None, None, :], self.background[None, :, :])
            scores = self.model.scores(synthetic.reshape(-1, rows.shape[1]))
            evaluations += len(synthetic) * len(self.background)
            values = scores[:, classes[index]].reshape(len(design.masks), len(self.background)).mean(axis=1)
            adjusted = values - base_values[index] - design.masks[:, -1] * total
            rest = design.projection @ adjusted
            attributions[index, columns[:-1]] = rest
            attributions[index, columns[-1]] = total - rest.sum()
        return base_values, attributions, evaluations
