"""The artifact as the explainer sees it: an ONNX session with one float input [N, F] and either a
probability tensor [N, C] (a classifier, beside its label output) or one value column (a regressor).

Every path explains this very session: the exact paths read their weights from its graph and are
checked against it on the background rows before they are trusted (see OnnxExplainer)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray

from cascade.explain._types import ExplainUnsupported

__all__ = ["BATCH_ROWS", "OnnxModel"]

# Rows per session run: large enough that the per-call overhead vanishes, small enough that a
# KernelSHAP batch (coalitions x background rows) stays a few tens of MB.
BATCH_ROWS = 65_536
_CLASS_LABEL_ATTRIBUTES = ("classlabels_int64s", "classlabels_ints", "classlabels_strings")


@dataclass(frozen=True)
class _Outputs:
    scores_index: int  # the session output holding probabilities (classifier) or values (regressor)
    classifier: bool


def _class_labels(graph: onnx.GraphProto, n_classes: int) -> list[str] | None:
    """The class labels a classifier node declares (in probability-column order), if one does."""
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.name in _CLASS_LABEL_ATTRIBUTES:
                values = onnx.helper.get_attribute_value(attribute)
                labels = [v.decode() if isinstance(v, bytes) else str(v) for v in values]
                if len(labels) == n_classes:
                    return labels
    return None


class OnnxModel:
    """A session over the artifact, run in bounded batches, answering float64 scores [N, C]:
    probabilities for a classifier, one value column for a regressor."""

    def __init__(self, onnx_bytes: bytes, n_features: int, threads: int = 1) -> None:
        try:
            self.proto = onnx.load_model_from_string(onnx_bytes)
            options = ort.SessionOptions()
            # Explanations run beside serving in worker processes: one thread each keeps them from
            # stealing the inference path's cores, and keeps results bit-for-bit repeatable.
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(
                onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnx/onnxruntime raise their own types for a corrupt artifact
            raise ExplainUnsupported(f"the artifact is not a loadable ONNX model: {exc}") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 2:
            described = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
            raise ExplainUnsupported(
                f"explaining needs one float input [rows, features]; this has {described}"
            )
        width = inputs[0].shape[1]
        if isinstance(width, int) and width != n_features:
            raise ExplainUnsupported(f"the model reads {width} features, but {n_features} are named")
        self.input_name: str = inputs[0].name
        self.n_features = n_features
        self._outputs = self._find_outputs()
        self.classifier = self._outputs.classifier

    def _find_outputs(self) -> _Outputs:
        outputs = self.session.get_outputs()
        floats = [i for i, o in enumerate(outputs) if o.type in ("tensor(float)", "tensor(double)")]
        others = [o for o in outputs if o.type not in ("tensor(float)", "tensor(double)")]
        if any(not o.type.startswith("tensor(") for o in others):
            raise ExplainUnsupported(
                "explaining needs tensor outputs: a probability map (ZipMap) is not one; "
                "export classifiers without ZipMap (skl2onnx: options={'zipmap': False})"
            )
        if len(floats) != 1:
            described = ", ".join(f"{o.name} {o.type}" for o in outputs)
            raise ExplainUnsupported(
                f"explaining needs exactly one float output (probabilities or a value); this has {described}"
            )
        # A label output beside the float one marks a classifier (skl2onnx, onnxmltools, ...).
        return _Outputs(scores_index=floats[0], classifier=bool(others))

    def scores(self, rows: NDArray[np.float32]) -> NDArray[np.float64]:
        """The model's probabilities [N, C] or values [N, 1] for float32 rows [N, F]."""
        parts: list[NDArray[np.float64]] = []
        for start in range(0, len(rows), BATCH_ROWS):
            batch = np.ascontiguousarray(rows[start : start + BATCH_ROWS], dtype=np.float32)
            result = self.session.run(None, {self.input_name: batch})[self._outputs.scores_index]
            parts.append(np.asarray(result, dtype=np.float64).reshape(len(batch), -1))
        if not parts:
            return np.zeros((0, 1), dtype=np.float64)
        scores = np.concatenate(parts)
        if not self.classifier and scores.shape[1] != 1:
            raise ExplainUnsupported(f"a regressor must output one value per row, not {scores.shape[1]}")
        return scores

    def class_labels(self, n_classes: int) -> list[str] | None:
        return _class_labels(self.proto.graph, n_classes) if self.classifier else None
