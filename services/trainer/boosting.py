"""XGBoost and LightGBM, the optional families: installed by the `import` extra, built for the
search, and converted to ONNX by onnxmltools, for the search's exports and for imported models alike.

Nothing here imports the libraries at module level: a trainer without the extra still starts, leaves
these families out of its default search, and names the extra when one is asked for."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import onnx

from cascade.errors import CascadeError, FailedPrecondition, InvalidArgument
from cascade.training_spec import BOOSTING, Task

__all__ = [
    "CONVERTER_OPSET",
    "IMPORT_EXTRA",
    "boosting_estimator",
    "boosting_to_onnx",
    "is_boosting",
    "lightgbm_float32_thresholds",
    "missing_library",
    "onnxmltools_convert",
    "optional",
]

# The pyproject extra that installs onnxmltools, xgboost and lightgbm.
IMPORT_EXTRA = "cascade-mlops[import]"
# onnxmltools' tree converters support opsets up to 15; onnxruntime runs them all.
CONVERTER_OPSET = 15


def optional(module: str) -> Any:
    """The module, or a FailedPrecondition naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise FailedPrecondition(
            f"{module} is not installed on this trainer: install {IMPORT_EXTRA}"
        ) from exc


def missing_library(family: str) -> str | None:
    """The first library a boosting family needs that cannot be imported here; None when it can be
    trained and exported (or is no boosting family)."""
    if family not in BOOSTING:
        return None
    for module in (family, "onnxmltools"):
        try:
            importlib.import_module(module)
        except ImportError:
            return module
    return None


def is_boosting(model: Any) -> bool:
    return type(model).__module__.split(".")[0] in BOOSTING


def boosting_estimator(family: str, task: Task, params: dict[str, Any], seed: int) -> Any:
    """A scikit-learn-style estimator of the family: one thread (the trainer shares a small machine
    with the stack), seeded, quiet."""
    classify = task == "classification"
    if family == "xgboost":
        xgboost = optional("xgboost")
        optional("onnxmltools")
        boosting = xgboost.XGBClassifier if classify else xgboost.XGBRegressor
        return boosting(n_jobs=1, random_state=seed, tree_method="hist", **params)
    if family == "lightgbm":
        lightgbm = optional("lightgbm")
        optional("onnxmltools")
        boosting = lightgbm.LGBMClassifier if classify else lightgbm.LGBMRegressor
        return boosting(n_jobs=1, random_state=seed, verbose=-1, **params)
    raise InvalidArgument(f"{family!r} is no boosting family")


def boosting_to_onnx(model: Any, width: int, input_name: str) -> bytes:
    """A fitted XGBoost or LightGBM model (scikit-learn API) as ONNX with one float input; a
    classifier answers a label and a probability tensor, as Cascade's own exports do."""
    onnxmltools = optional("onnxmltools")
    if type(model).__module__.startswith("xgboost"):
        # The converter reads feature names back from the trees; by position they match the input.
        model.get_booster().feature_names = None
        return onnxmltools_convert(onnxmltools.convert_xgboost, model, width, input_name, FailedPrecondition)
    booster = lightgbm_float32_thresholds(model.booster_)
    return onnxmltools_convert(
        onnxmltools.convert_lightgbm, booster, width, input_name, FailedPrecondition, zipmap=False
    )


def onnxmltools_convert(
    convert: Any, model: Any, width: int, input_name: str, error: type[CascadeError], **options: Any
) -> bytes:
    """`convert` (one of onnxmltools' converters) applied to `model`, with every output's batch
    dimension dynamic. A converter's failure is an `error` with its first line."""
    from onnxmltools.convert.common.data_types import FloatTensorType

    try:
        converted = convert(
            model,
            initial_types=[(input_name, FloatTensorType([None, width]))],
            target_opset=CONVERTER_OPSET,
            **options,
        )
    except Exception as exc:  # the converters raise RuntimeError, ValueError, NotImplementedError
        raise error(f"onnxmltools cannot convert this model: {first_line(exc)}") from exc
    _batch_dimension_dynamic(converted)
    serialized: bytes = converted.SerializeToString()
    return serialized


def _batch_dimension_dynamic(model: onnx.ModelProto) -> None:
    """Some converters declare a label output of one row; every output has a row per input row,
    and serving and the validator read the declared shapes."""
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "N"


def first_line(exc: BaseException) -> str:
    """Library errors can run to pages of native stack; the first line says what went wrong."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def lightgbm_float32_thresholds(booster: Any) -> Any:
    """The LightGBM booster with every numeric split's threshold lowered to the largest float32 not
    above it, which answers every float32 row exactly as the original.

    LightGBM compares a row's value to a double threshold and ONNX's tree ensemble to a float32 one;
    onnxmltools rounds to nearest, so a threshold just below a float32 value sends a row holding
    exactly that value the other way (seen on held-out diabetes rows: 2% off). Cascade's inputs are
    float32, and for a float32 x, x <= t exactly when x <= the largest float32 not above t."""
    lightgbm = optional("lightgbm")
    lines = booster.model_to_string().split("\n")
    threshold_line: int | None = None
    for index, line in enumerate(lines):
        if line.startswith("threshold="):
            threshold_line = index
        elif line.startswith("decision_type=") and threshold_line is not None:
            kinds = [int(kind) for kind in line.removeprefix("decision_type=").split()]
            values = lines[threshold_line].removeprefix("threshold=").split()
            lowered = [
                value if kind & 1 else repr(_float32_at_most(float(value)))  # bit 0: categorical
                for value, kind in zip(values, kinds, strict=True)
            ]
            lines[threshold_line] = "threshold=" + " ".join(lowered)
            threshold_line = None
    # The trees' byte sizes locate them when loading; without the line they are read in sequence.
    text = "\n".join(line for line in lines if not line.startswith("tree_sizes="))
    return lightgbm.Booster(model_str=text)


def _float32_at_most(value: float) -> float:
    nearest = np.float32(value)
    if float(nearest) > value:
        nearest = np.nextafter(nearest, np.float32(-np.inf))
    return float(nearest)
