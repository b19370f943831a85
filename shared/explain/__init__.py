"""Per-prediction explanations of Cascade ONNX artifacts: Shapley feature attributions against
background rows, transport-free (numpy, onnx, onnxruntime), for serving, the trainer and the monitor.

    from cascade.explain import OnnxExplainer, ExplainBudget

    explainer = OnnxExplainer(onnx_bytes, background, features=names)
    explanation = explainer.explain(rows, budget=ExplainBudget(max_evaluations=500_000))
    # explanation.base_values + explanation.attributions.sum(1) == explanation.outputs

The method per artifact (`explainer.method`) is the fastest exact one its graph allows: "linear"
(Scaler + LinearClassifier/LinearRegressor), "tree" (TreeEnsembleClassifier/Regressor), else
"kernel" (KernelSHAP over the ONNX session). See _explainer.py for what each decomposes.
"""

from cascade.explain._budget import KERNEL_BACKGROUND, explainer_within, sample_rows
from cascade.explain._explainer import OnnxExplainer, attribution_shares, global_attribution
from cascade.explain._types import (
    ExplainBudget,
    ExplainBudgetExceeded,
    ExplainDeadlineExceeded,
    ExplainError,
    ExplainUnsupported,
    Explanation,
    Method,
    OutputSpace,
)

__all__ = [
    "KERNEL_BACKGROUND",
    "ExplainBudget",
    "ExplainBudgetExceeded",
    "ExplainDeadlineExceeded",
    "ExplainError",
    "ExplainUnsupported",
    "Explanation",
    "Method",
    "OnnxExplainer",
    "OutputSpace",
    "attribution_shares",
    "explainer_within",
    "global_attribution",
    "sample_rows",
]
