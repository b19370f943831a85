"""Exact interventional TreeSHAP of an ai.onnx.ml TreeEnsembleClassifier/Regressor, read from the
graph (random forests, gradient boosting, onnxmltools' XGBoost/LightGBM), against each background row.

For one tree, one explained row x and one background row z, the value of a coalition S is the leaf
reached when the features in S take x's values and the others z's. Walking the tree with both rows:
where x and z go the same way, follow them; where they part on feature i, the x side is reached only
if i is in S, the z side only if it is not (a side contradicting an earlier choice for i is dead).
Each leaf reached so defines a game v * [A within S, B outside S] (A: features that went x's way, B:
z's), whose Shapley values are closed-form:

    phi_i += v (a-1)! b! / (a+b)!   for i in A,      phi_j -= v a! (b-1)! / (a+b)!   for j in B

Summed over leaves, trees and background rows (averaged), these are exactly the interventional
Shapley values, which shap's TreeExplainer(data=background, feature_perturbation="interventional")
approximates (it departs from them where a path splits twice on a feature: shap/shap#3267), and add
up per (x, z) pair to f(x) - f(z), hence base + sum == output.

Two vectorised ways to sum those games, the same values to rounding (tests/explain):
- leaf games (trees that split x <= t, i.e. scikit-learn's and most exports): each leaf is a box, an
  interval per feature on its path; x and z being in or out of each interval decide A and B. The
  background rows' in/out patterns per leaf are computed once, and a row costs one pass over the
  distinct (leaf, pattern) pairs: milliseconds for the trainer's forests.
- walks (any split mode, e.g. XGBoost's x < t): all (row, tree) walks advance together one level a
  step as numpy arrays of states, each carrying the set of background rows still walking alike (a
  bitmask) and A and B (bitmasks of features); where some background rows part from the row the
  state splits. The decisions of every node for every row are computed up front.

What is decomposed is the ensemble's raw sum before the post-transform, mapped to each class:
    forests (post_transform NONE)   the probability itself ("probability")
    boosted LOGISTIC / SOFTMAX      the class's margin: log-odds or softmax logit ("margin")
    regressors                      the value ("value"); AVERAGE aggregation divides by the trees
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
import onnx
from numpy.typing import NDArray

from cascade.explain._types import ExplainDeadlineExceeded, Method, OutputSpace

__all__ = ["TreePath", "read_tree"]

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]
_MODES = {"BRANCH_LEQ": 0, "BRANCH_LT": 1, "BRANCH_GTE": 2, "BRANCH_GT": 3, "BRANCH_EQ": 4, "BRANCH_NEQ": 5}
_LEAF = -1
_PLUMBING = frozenset({"Identity", "Cast", "Mul"})
# States (row x background row x tree walks) advanced per step: bounds memory at a few tens of MB.
_STATES_PER_CHUNK = 400_000
# Leaves x background rows above which leaf games would hold too much (8 bytes each, a few times).
_MAX_LEAF_PATTERNS = 12_000_000


def _attributes(node: onnx.NodeProto) -> dict[str, object]:
    values: dict[str, object] = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, onnx.TensorProto):
            value = onnx.numpy_helper.to_array(value)
        values[attribute.name] = value
    return values


def _strings(values: object) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values, dtype=object).ravel()]


@dataclass(frozen=True)
class Forest:
    """Every tree's nodes in flat arrays (global node indices), leaves holding their raw scores."""

    feature: Ints  # [nodes] the split feature (0 at leaves)
    threshold: NDArray[np.float32]  # [nodes]
    mode: Ints  # [nodes] a _MODES code, or _LEAF
    true_child: Ints  # [nodes] (itself at leaves)
    false_child: Ints  # [nodes]
    values: Floats  # [nodes, columns] each leaf's contribution to each raw score column
    roots: Ints  # [trees]
    base: Floats  # [columns]

    def decisions(self, rows: NDArray[np.float32]) -> NDArray[np.bool_]:
        """[N, nodes]: whether each row goes to each node's true child (float32, as ONNX Runtime)."""
        values = rows[:, self.feature]
        threshold = self.threshold[None, :]
        modes = set(np.unique(self.mode[self.mode != _LEAF]).tolist())
        if modes <= {_MODES["BRANCH_LEQ"]}:
            return np.asarray(values <= threshold)
        mode = self.mode[None, :]
        goes = np.zeros(values.shape, dtype=bool)
        for code, decided in (
            (0, values <= threshold),
            (1, values < threshold),
            (2, values >= threshold),
            (3, values > threshold),
            (4, values == threshold),
            (5, values != threshold),
        ):
            if code in modes:
                goes |= (mode == code) & decided
        return goes

    def raw(self, rows: NDArray[np.float32]) -> Floats:
        """[N, columns]: the ensemble's raw scores (base + leaves), before any post-transform."""
        goes = self.decisions(rows)
        index = np.arange(len(rows))[:, None]
        node = np.broadcast_to(self.roots, (len(rows), len(self.roots))).copy()
        while True:
            inner = self.mode[node] != _LEAF
            if not inner.any():
                break
            step = np.where(goes[index, node], self.true_child[node], self.false_child[node])
            node = np.where(inner, step, node)
        return np.asarray(self.base + self.values[node].sum(axis=1), dtype=np.float64)


def _forest(attributes: dict[str, object], prefix: str) -> Forest | None:
    """The flat forest of a TreeEnsemble node's attributes (`prefix` "class" or "target")."""
    trees = np.asarray(attributes["nodes_treeids"], dtype=np.int64)
    ids = np.asarray(attributes["nodes_nodeids"], dtype=np.int64)
    thresholds = attributes.get("nodes_values", attributes.get("nodes_values_as_tensor"))
    if thresholds is None:
        return None
    modes = _strings(attributes["nodes_modes"])
    if any(m != "LEAF" and m not in _MODES for m in modes):
        return None
    width = int(ids.max()) + 1
    keys = trees * width + ids
    order = np.argsort(keys)
    if np.any(np.diff(keys[order]) == 0):
        return None  # a node listed twice

    def index_of(tree_ids: Ints, node_ids: Ints) -> Ints | None:
        wanted = tree_ids * width + node_ids
        found = np.searchsorted(keys[order], wanted)
        found = np.minimum(found, len(keys) - 1)
        if np.any(keys[order][found] != wanted):
            return None
        return np.asarray(order[found], dtype=np.int64)

    mode = np.array([_LEAF if m == "LEAF" else _MODES[m] for m in modes], dtype=np.int64)
    inner = mode != _LEAF
    true_child = np.arange(len(ids), dtype=np.int64)
    false_child = np.arange(len(ids), dtype=np.int64)
    true_ids = np.asarray(attributes["nodes_truenodeids"], dtype=np.int64)
    false_ids = np.asarray(attributes["nodes_falsenodeids"], dtype=np.int64)
    true_found = index_of(trees[inner], true_ids[inner])
    false_found = index_of(trees[inner], false_ids[inner])
    if true_found is None or false_found is None:
        return None
    true_child[inner] = true_found
    false_child[inner] = false_found
    children = np.zeros(len(ids), dtype=bool)
    children[true_found] = True
    children[false_found] = True
    roots = np.flatnonzero(~children)
    if len(roots) != len(np.unique(trees)):
        return None

    leaf_trees = np.asarray(attributes[f"{prefix}_treeids"], dtype=np.int64)
    leaf_nodes = np.asarray(attributes[f"{prefix}_nodeids"], dtype=np.int64)
    columns = np.asarray(attributes[f"{prefix}_ids"], dtype=np.int64)
    weights = attributes.get(f"{prefix}_weights", attributes.get(f"{prefix}_weights_as_tensor"))
    if weights is None:
        return None
    leaves = index_of(leaf_trees, leaf_nodes)
    if leaves is None or np.any(inner[leaves]):
        return None  # weights on an inner node: not a form ONNX Runtime sums the way read here
    return Forest(
        feature=np.where(inner, np.asarray(attributes["nodes_featureids"], dtype=np.int64), 0),
        threshold=np.asarray(thresholds, dtype=np.float32),
        mode=mode,
        true_child=true_child,
        false_child=false_child,
        values=_leaf_values(leaves, columns, np.asarray(weights, dtype=np.float64), len(ids)),
        roots=np.asarray(roots, dtype=np.int64),
        base=np.zeros(int(columns.max()) + 1 if len(columns) else 1),
    )


def _leaf_values(leaves: Ints, columns: Ints, weights: Floats, nodes: int) -> Floats:
    values = np.zeros((nodes, int(columns.max()) + 1 if len(columns) else 1))
    np.add.at(values, (leaves, columns), weights)
    return values


@dataclass(frozen=True)
class _Link:
    """How the ensemble's raw scores become the session's outputs, and each class's explained
    quantity: quantity[k] = sign[k] * raw[column[k]] + offset[k]."""

    kind: str  # "columns" (a score per class), "binary_probability", "binary_logistic", "binary_raw"
    transform: str  # the post_transform of "columns"
    column: Ints  # [classes]
    sign: Floats  # [classes]
    offset: Floats  # [classes]
    output_space: OutputSpace

    def outputs(self, raw: Floats) -> Floats:
        """The session's probabilities (or values) from raw scores, as ONNX Runtime computes them."""
        if self.kind == "binary_probability":
            return np.stack([1.0 - raw[:, 0], raw[:, 0]], axis=1)
        if self.kind == "binary_logistic":
            return np.stack([_sigmoid(-raw[:, 0]), _sigmoid(raw[:, 0])], axis=1)
        if self.kind == "binary_raw":
            return np.stack([-raw[:, 0], raw[:, 0]], axis=1)
        if self.transform == "LOGISTIC":
            return _sigmoid(raw)
        if self.transform == "SOFTMAX":
            shifted = np.exp(raw - raw.max(axis=1, keepdims=True))
            return np.asarray(shifted / shifted.sum(axis=1, keepdims=True), dtype=np.float64)
        return raw


def _sigmoid(values: Floats) -> Floats:
    return np.asarray(1.0 / (1.0 + np.exp(-values)), dtype=np.float64)


def _link(
    attributes: dict[str, object], forest: Forest, n_classes: int, classifier: bool
) -> tuple[_Link, Forest] | None:
    transform = _strings(attributes.get("post_transform", b"NONE"))[0]
    base = np.asarray(attributes.get("base_values", attributes.get("base_values_as_tensor", [])), np.float64)
    columns = forest.values.shape[1]
    if not classifier:
        if transform != "NONE" or int(np.asarray(attributes.get("n_targets", 1))) != 1 or columns != 1:
            return None
        aggregate = _strings(attributes.get("aggregate_function", b"SUM"))[0]
        if aggregate not in ("SUM", "AVERAGE"):
            return None
        values = forest.values / len(forest.roots) if aggregate == "AVERAGE" else forest.values
        forest = _with(forest, values, base[:1] if base.size else np.zeros(1))
        one: Ints = np.zeros(1, dtype=np.int64)
        return _Link("columns", "NONE", one, np.ones(1), np.zeros(1), "value"), forest
    every: Ints = np.arange(n_classes, dtype=np.int64)
    if n_classes == 2 and columns == 1 and base.size <= 1:
        # One score s for two classes (ONNX Runtime's binary case): [1 - s, s] when every weight is
        # positive (a forest's probability), [sigmoid(-s), sigmoid(s)] under LOGISTIC, else [-s, s].
        forest = _with(forest, forest.values, base[:1] if base.size else np.zeros(1))
        zero: Ints = np.zeros(2, dtype=np.int64)
        positive = bool(np.all(forest.values >= 0))
        if positive:
            link = _Link(
                "binary_probability",
                transform,
                zero,
                np.array([-1.0, 1.0]),
                np.array([1.0, 0.0]),
                "probability",
            )
        elif transform == "LOGISTIC":
            link = _Link("binary_logistic", transform, zero, np.array([-1.0, 1.0]), np.zeros(2), "margin")
        elif transform == "NONE":
            link = _Link("binary_raw", transform, zero, np.array([-1.0, 1.0]), np.zeros(2), "probability")
        else:
            return None
        return link, forest
    if columns > n_classes or transform not in ("NONE", "LOGISTIC", "SOFTMAX"):
        return None
    if base.size not in (0, n_classes) or (n_classes == 2 and base.size and np.any(base != 0)):
        return None  # ONNX Runtime treats two-class base values in its own way: leave it to KernelSHAP
    values = np.zeros((forest.values.shape[0], n_classes))
    values[:, :columns] = forest.values
    forest = _with(forest, values, base if base.size else np.zeros(n_classes))
    space: OutputSpace = "probability" if transform == "NONE" else "margin"
    return _Link("columns", transform, every, np.ones(n_classes), np.zeros(n_classes), space), forest


def _with(forest: Forest, values: Floats, base: Floats) -> Forest:
    return Forest(
        feature=forest.feature,
        threshold=forest.threshold,
        mode=forest.mode,
        true_child=forest.true_child,
        false_child=forest.false_child,
        values=values,
        roots=forest.roots,
        base=np.asarray(base, dtype=np.float64),
    )


def _shapley_weights(depth: int) -> tuple[Floats, Floats]:
    """[a, b] tables: (a-1)! b! / (a+b)! for a feature of A, a! (b-1)! / (a+b)! for one of B."""
    size = depth + 2
    for_a = np.zeros((size, size))
    for_b = np.zeros((size, size))
    for a in range(size):
        for b in range(size):
            if a + b == 0:
                continue
            whole = math.factorial(a + b)
            if a:
                for_a[a, b] = math.factorial(a - 1) * math.factorial(b) / whole
            if b:
                for_b[a, b] = math.factorial(a) * math.factorial(b - 1) / whole
    return for_a, for_b


def _max_depth(forest: Forest) -> int:
    depth = 0
    frontier = forest.roots.copy()
    while True:
        frontier = frontier[forest.mode[frontier] != _LEAF]
        if not len(frontier):
            return depth
        depth += 1
        frontier = np.concatenate([forest.true_child[frontier], forest.false_child[frontier]])


def _pack(bits: NDArray[np.bool_]) -> NDArray[np.uint64]:
    """[N, K] booleans as [N, ceil(K / 64)] uint64 bitmasks (bit k of word k // 64)."""
    words = (bits.shape[1] + 63) // 64
    padded = np.zeros((bits.shape[0], words * 64), dtype=bool)
    padded[:, : bits.shape[1]] = bits
    packed = np.packbits(padded, axis=1, bitorder="little")  # [N, words * 8] bytes, little-endian
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64)


def _popcount(words: NDArray[np.uint64]) -> Ints:
    """[S, W] bitmasks: the number of bits set in each row."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.asarray(np.bitwise_count(words).sum(axis=1), dtype=np.int64)
    as_bytes = np.ascontiguousarray(words).view(np.uint8)
    return np.asarray(_BYTE_BITS[as_bytes].sum(axis=1), dtype=np.int64)


_BYTE_BITS = np.array([bin(value).count("1") for value in range(256)], dtype=np.int64)


@dataclass
class _States:
    """Walks in progress for one explained row in one tree, each standing for a set of background
    rows that walked alike so far: the node, the features that went x's way (A) and z's way (B) as
    bitmasks of features, and the set of background rows as a bitmask of rows. At a node every
    background row is in at most one state, so a state is never more work than one walk per row."""

    row: Ints
    node: Ints
    in_a: NDArray[np.uint64]  # [S, feature words]
    in_b: NDArray[np.uint64]
    rows: NDArray[np.uint64]  # [S, background words]

    def take(self, index: Ints) -> _States:
        return _States(
            self.row[index], self.node[index], self.in_a[index], self.in_b[index], self.rows[index]
        )

    @staticmethod
    def join(parts: list[_States]) -> _States:
        return _States(
            np.concatenate([p.row for p in parts]),
            np.concatenate([p.node for p in parts]),
            np.concatenate([p.in_a for p in parts]),
            np.concatenate([p.in_b for p in parts]),
            np.concatenate([p.rows for p in parts]),
        )


def _boxes(forest: Forest, n_features: int) -> tuple[Ints, NDArray[np.float32], NDArray[np.float32]] | None:
    """Each leaf (x <= t splits only) as a box: its node, and per feature the interval low < x <= high
    its path allows (-inf, inf where the path does not split on the feature); None if too large."""
    if len(forest.mode) * n_features > 40_000_000:
        return None
    low = np.full((len(forest.mode), n_features), -np.inf, dtype=np.float32)
    high = np.full((len(forest.mode), n_features), np.inf, dtype=np.float32)
    frontier = forest.roots.copy()
    while len(frontier):
        inner = frontier[forest.mode[frontier] != _LEAF]
        feature, threshold = forest.feature[inner], forest.threshold[inner]
        for child, goes_true in ((forest.true_child[inner], True), (forest.false_child[inner], False)):
            low[child], high[child] = low[inner], high[inner]
            if goes_true:
                high[child, feature] = np.minimum(high[inner, feature], threshold)
            else:
                low[child, feature] = np.maximum(low[inner, feature], threshold)
        frontier = np.concatenate([forest.true_child[inner], forest.false_child[inner]])
    leaves = np.flatnonzero(forest.mode == _LEAF)
    return leaves.astype(np.int64), low[leaves], high[leaves]


@dataclass(frozen=True)
class _LeafGames:
    """The same Shapley values by leaves instead of walks, for trees that only split x <= t (all of
    scikit-learn's): a leaf is a box, one interval per feature on its path (however often the path
    splits on it). For a row x, a background row z and a leaf, x is inside feature f's interval or
    not, and so is z; the leaf's game is then A = {f: x in, z out}, B = {f: x out, z in}, and dead if
    some f has both out. Background rows with the same in/out pattern at a leaf play the same game,
    so each leaf keeps its distinct patterns and their counts, computed once; explaining a row is one
    vectorised pass over (leaf, pattern) pairs. Fully grown trees, whose paths split on a feature
    many times, have far fewer leaf patterns than walk states."""

    leaf_node: Ints  # [L] the node of each leaf
    position_feature: Ints  # [L, P] the feature of each of the leaf's intervals (-1: none)
    full: NDArray[np.uint64]  # [L] a bit per interval the leaf has
    constraint_leaf: Ints  # [C] the leaf of each interval, sorted by leaf
    constraint_feature: Ints  # [C]
    constraint_low: NDArray[np.float32]  # [C] x > low
    constraint_high: NDArray[np.float32]  # [C] x <= high
    constraint_bit: NDArray[np.uint64]  # [C] 1 << its position in the leaf
    leaf_starts: Ints  # [L] where each leaf's intervals start in the constraint arrays
    pattern_leaf: Ints  # [Q] the leaf of each distinct background pattern
    pattern_mask: NDArray[np.uint64]  # [Q] the intervals the background rows of the pattern are in
    pattern_count: Ints  # [Q] how many background rows have it

    @staticmethod
    def of(forest: Forest, background: NDArray[np.float32]) -> _LeafGames | None:
        """The leaf games of `forest`, or None when it splits otherwise than x <= t, or has so many
        leaves that their patterns would not fit in memory (then the walks, slower, take it)."""
        if np.any((forest.mode != _LEAF) & (forest.mode != _MODES["BRANCH_LEQ"])):
            return None
        if int(np.sum(forest.mode == _LEAF)) * len(background) > _MAX_LEAF_PATTERNS:
            return None
        boxes = _boxes(forest, background.shape[1])
        if boxes is None:
            return None
        leaves, low, high = boxes
        constrained = (low > -np.inf) | (high < np.inf)  # [L, F] the features each leaf's path splits on
        sizes = constrained.sum(axis=1)
        widest = max(1, int(sizes.max(initial=0)))
        if widest > 64:
            return None
        leaf, feature = np.nonzero(constrained)  # by leaf, then by feature
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        position = np.arange(len(leaf)) - starts[leaf]
        position_feature = np.full((len(leaves), widest), -1, dtype=np.int64)
        position_feature[leaf, position] = feature
        games = _LeafGames(
            leaf_node=leaves,
            position_feature=position_feature,
            full=np.array([(1 << int(s)) - 1 for s in sizes], dtype=np.uint64),
            constraint_leaf=leaf.astype(np.int64),
            constraint_feature=feature.astype(np.int64),
            constraint_low=low[leaf, feature],
            constraint_high=high[leaf, feature],
            constraint_bit=np.left_shift(np.uint64(1), position.astype(np.uint64)),
            leaf_starts=starts,
            pattern_leaf=np.zeros(0, dtype=np.int64),
            pattern_mask=np.zeros(0, dtype=np.uint64),
            pattern_count=np.zeros(0, dtype=np.int64),
        )
        masks = np.sort(games.inside(background), axis=0).T  # [L, B], each leaf's patterns sorted
        starts = np.concatenate(
            [np.ones((len(leaves), 1), dtype=bool), masks[:, 1:] != masks[:, :-1]], axis=1
        )
        found = np.nonzero(starts)
        pattern_leaf: Ints = np.asarray(found[0], dtype=np.int64)
        pattern_start: Ints = np.asarray(found[1], dtype=np.int64)
        # A pattern runs to the next one of its leaf, or to the end of the leaf's sorted rows.
        last_of_leaf = np.append(pattern_leaf[1:] != pattern_leaf[:-1], True)
        ends = np.where(last_of_leaf, masks.shape[1], np.append(pattern_start[1:], 0))
        return replace(
            games,
            pattern_leaf=pattern_leaf,
            pattern_mask=np.asarray(masks[pattern_leaf, pattern_start], dtype=np.uint64),
            pattern_count=np.asarray(ends - pattern_start, dtype=np.int64),
        )

    def inside(self, rows: NDArray[np.float32]) -> NDArray[np.uint64]:
        """[N, L]: for each row and leaf, a bit per interval of the leaf the row is inside."""
        masks = np.zeros((len(rows), len(self.leaf_node)), dtype=np.uint64)
        intervals = len(self.constraint_feature)
        if not intervals:
            return masks
        # Leaves whose path splits on nothing (a one-leaf tree) keep 0; reduceat would repeat a value.
        split = np.diff(np.append(self.leaf_starts, intervals)) > 0
        step = max(1, 2_000_000 // intervals)  # rows at a time: a few tens of MB of intervals
        for start in range(0, len(rows), step):
            values = rows[start : start + step, self.constraint_feature]
            inside = (values > self.constraint_low) & (values <= self.constraint_high)
            bits = inside * self.constraint_bit  # disjoint bits: their sum per leaf is their OR
            # A zero column past the end: trailing unsplit leaves (LightGBM's multiclass ends trees
            # with them) start there, and reduceat refuses an index past the last column.
            bits = np.pad(bits, ((0, 0), (0, 1)))
            masks[start : start + step] = np.add.reduceat(bits, self.leaf_starts, axis=1) * split
        return masks

    def pairs(self) -> int:
        return len(self.pattern_leaf)

    def attribute(
        self,
        rows: NDArray[np.float32],
        leaf_values: Floats,  # [n, L] each row's explained leaf value (sign * value[column])
        for_a: Floats,
        for_b: Floats,
        n_features: int,
        n_background: int,
    ) -> Floats:
        x_inside = self.inside(rows)  # [n, L]
        leaf = self.pattern_leaf
        x_mask = x_inside[:, leaf]  # [n, Q]
        fail = self.full[leaf] & ~x_mask
        alive = (self.pattern_mask & fail) == fail
        in_a = x_mask & ~self.pattern_mask
        moved = alive & ((in_a | fail) != 0)
        row, pair = np.nonzero(moved)
        in_a, in_b, leaf = in_a[row, pair], fail[row, pair], leaf[pair]
        a, b = _popcount(in_a[:, None]), _popcount(in_b[:, None])
        value = leaf_values[row, leaf] * self.pattern_count[pair] / n_background
        widest = self.position_feature.shape[1]
        shift = np.arange(widest, dtype=np.uint64)
        features = self.position_feature[leaf]  # [S, P]
        gains = ((in_a[:, None] >> shift) & np.uint64(1)) * (value * for_a[a, b])[:, None]
        gains -= ((in_b[:, None] >> shift) & np.uint64(1)) * (value * for_b[a, b])[:, None]
        cells = row[:, None] * n_features + np.maximum(features, 0)
        attributions = np.bincount(cells.ravel(), weights=gains.ravel(), minlength=len(rows) * n_features)
        return np.asarray(attributions.reshape(len(rows), n_features), dtype=np.float64)


class TreePath:
    """Exact interventional TreeSHAP of one ensemble against fixed background rows."""

    method: Method = "tree"

    def __init__(self, forest: Forest, link: _Link, background: NDArray[np.float32], n_features: int) -> None:
        self.forest = forest
        self.link = link
        self.output_space: OutputSpace = link.output_space
        self.background = background
        self.n_features = n_features
        self._feature_words = (n_features + 63) // 64
        background_goes = forest.decisions(background)  # [B, nodes]
        self._background_raw = forest.raw(background)  # [B, columns]
        # [nodes, background words]: which background rows go to each node's true child.
        self._true_rows = _pack(background_goes.T)
        self._all_rows = _pack(np.ones((1, len(background)), dtype=bool))[0]
        self._depth = max(1, _max_depth(forest))
        self._for_a, self._for_b = _shapley_weights(self._depth)
        self._leaves = _LeafGames.of(forest, background)

    def predict(self, rows: NDArray[np.float32]) -> Floats:
        return self.link.outputs(self.forest.raw(rows))

    def explain(
        self, rows: NDArray[np.float32], classes: NDArray[np.int64], deadline: float | None
    ) -> tuple[Floats, Floats, Floats]:
        attributions = np.zeros((len(rows), self.n_features))
        if self._leaves is not None:
            chunk = max(1, _STATES_PER_CHUNK // max(1, self._leaves.pairs()))
        else:
            chunk = max(1, _STATES_PER_CHUNK // (len(self.forest.roots) * 64))
        for start in range(0, len(rows), chunk):
            if deadline is not None and time.monotonic() > deadline:
                raise ExplainDeadlineExceeded(
                    f"the deadline passed after {start} of {len(rows)} rows (TreeSHAP)"
                )
            stop = min(start + chunk, len(rows))
            if self._leaves is not None:
                part = classes[start:stop]
                leaf_values = (
                    self.link.sign[part, None]
                    * self.forest.values[self._leaves.leaf_node[None, :], self.link.column[part][:, None]]
                )
                attributions[start:stop] = self._leaves.attribute(
                    rows[start:stop],
                    leaf_values,
                    self._for_a,
                    self._for_b,
                    self.n_features,
                    len(self.background),
                )
            else:
                attributions[start:stop] = self._attribute(rows[start:stop], classes[start:stop])
        # The link is affine per class: the base is the background's mean explained quantity.
        column = self.link.column[classes]
        sign, offset = self.link.sign[classes, None], self.link.offset[classes, None]
        background_quantity = sign * self._background_raw[:, column].T + offset
        base_values = background_quantity.mean(axis=1)
        raw = self.forest.raw(rows)
        outputs = self.link.sign[classes] * raw[np.arange(len(rows)), column] + self.link.offset[classes]
        return base_values, attributions, outputs

    def _attribute(self, rows: NDArray[np.float32], classes: NDArray[np.int64]) -> Floats:
        forest = self.forest
        n_rows, n_trees = len(rows), len(forest.roots)
        row_goes = forest.decisions(rows)  # [n, nodes]
        count = n_rows * n_trees
        states = _States(
            row=np.repeat(np.arange(n_rows), n_trees),
            node=np.tile(forest.roots, n_rows),
            in_a=np.zeros((count, self._feature_words), dtype=np.uint64),
            in_b=np.zeros((count, self._feature_words), dtype=np.uint64),
            rows=np.broadcast_to(self._all_rows, (count, len(self._all_rows))).copy(),
        )
        # A state's leaf value in the explained quantity: sign * leaf[column] (the offset cancels).
        column, sign = self.link.column[classes], self.link.sign[classes]
        attributions = np.zeros(n_rows * self.n_features)
        while len(states.row):
            at_leaf = forest.mode[states.node] == _LEAF
            if at_leaf.any():
                done = states.take(np.flatnonzero(at_leaf))
                value = sign[done.row] * forest.values[done.node, column[done.row]]
                self._settle(attributions, done, value)
                states = states.take(np.flatnonzero(~at_leaf))
                if not len(states.row):
                    break
            states = self._step(states, row_goes)
        return attributions.reshape(n_rows, self.n_features) / len(self.background)

    def _step(self, states: _States, row_goes: NDArray[np.bool_]) -> _States:
        """Every state one level down. At a node on feature f, its background rows split into those
        that go x's way (they continue with it) and those that part from x, whose walks split: x's
        side needs f in S (dead if f already went z's way; merged with the first if f already went
        x's way), z's side needs f outside S (dead if f already went x's way)."""
        forest = self.forest
        node = states.node
        x_goes = row_goes[states.row, node]
        x_child = np.where(x_goes, forest.true_child[node], forest.false_child[node])
        z_child = np.where(x_goes, forest.false_child[node], forest.true_child[node])
        true_rows = self._true_rows[node]
        with_x = states.rows & np.where(x_goes[:, None], true_rows, ~true_rows)
        against = states.rows & ~with_x
        parted = against.any(axis=1)
        feature = forest.feature[node]
        word = feature // 64
        flag = np.left_shift(np.uint64(1), (feature % 64).astype(np.uint64))
        index = np.arange(len(node))
        had_a = (states.in_a[index, word] & flag) != 0
        had_b = (states.in_b[index, word] & flag) != 0

        parts = []
        x_side = np.flatnonzero(parted & ~had_a & ~had_b)
        if len(x_side):
            part = states.take(x_side)
            part.node, part.rows = x_child[x_side], against[x_side]
            part.in_a[np.arange(len(x_side)), word[x_side]] |= flag[x_side]
            parts.append(part)
        z_side = np.flatnonzero(parted & ~had_a)
        if len(z_side):
            part = states.take(z_side)
            part.node, part.rows = z_child[z_side], against[z_side]
            part.in_b[np.arange(len(z_side)), word[z_side]] |= flag[z_side]
            parts.append(part)
        # The rows going x's way carry on in place (with those that parted, if f already went x's way).
        states.node = x_child
        states.rows = np.where(had_a[:, None], states.rows, with_x)
        along = states.take(np.flatnonzero(states.rows.any(axis=1)))
        return _States.join([along, *parts]) if parts else along

    def _settle(self, attributions: Floats, done: _States, value: Floats) -> None:
        """Adds each finished state's leaf game, times its background rows, to its row's
        attributions (flat [rows * features])."""
        moved = (value != 0) & ((done.in_a != 0) | (done.in_b != 0)).any(axis=1)
        if not moved.any():
            return
        index = np.flatnonzero(moved)
        in_a, in_b = done.in_a[index], done.in_b[index]
        a, b = _popcount(in_a), _popcount(in_b)
        value = value[index] * _popcount(done.rows[index])
        row = done.row[index]
        features = np.arange(self.n_features)
        word, shift = features // 64, (features % 64).astype(np.uint64)
        gains = ((in_a[:, word] >> shift) & np.uint64(1)) * (value * self._for_a[a, b])[:, None]
        gains -= ((in_b[:, word] >> shift) & np.uint64(1)) * (value * self._for_b[a, b])[:, None]
        cells = row[:, None] * self.n_features + features  # [S, F] flat (row, feature) cells
        attributions += np.bincount(cells.ravel(), weights=gains.ravel(), minlength=attributions.size)


def read_tree(
    model: onnx.ModelProto, n_features: int, n_classes: int, background: NDArray[np.float32]
) -> TreePath | None:
    """The exact tree path for a graph that is one TreeEnsembleClassifier/Regressor on the input, or
    None. Around it only the plumbing converters add may sit (onnxmltools' LightGBM export: Identity,
    a Cast of the label, a Mul of the probabilities by one); whether that plumbing leaves the outputs
    as read is what OnnxExplainer's reproduction check on the background then proves."""
    ensembles = [
        n for n in model.graph.node if n.op_type in ("TreeEnsembleClassifier", "TreeEnsembleRegressor")
    ]
    others = [
        n for n in model.graph.node if n.op_type not in ("TreeEnsembleClassifier", "TreeEnsembleRegressor")
    ]
    if len(ensembles) != 1 or any(n.op_type not in _PLUMBING for n in others):
        return None
    node = ensembles[0]
    input_name = model.graph.input[0].name
    if node.input[0] != input_name or any(input_name in n.input for n in others):
        return None
    classifier = node.op_type == "TreeEnsembleClassifier"
    attributes = _attributes(node)
    try:
        forest = _forest(attributes, "class" if classifier else "target")
    except (KeyError, ValueError):
        return None
    if forest is None or int(forest.feature.max(initial=0)) >= n_features:
        return None
    linked = _link(attributes, forest, n_classes, classifier)
    if linked is None:
        return None
    link, forest = linked
    return TreePath(forest, link, background, n_features)
