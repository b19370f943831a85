"""Bring your own model, transport-free: a model trained elsewhere becomes an ONNX artifact that is
proven to predict what the original predicts, on rows the caller vouches for.

Formats, each as its library saves it most faithfully:

    onnx             taken as is; checked to take one float input of the features' width and to
                     answer a label (and, for a classifier, a probability tensor) per row
    sklearn_pickle   a fitted scikit-learn estimator or pipeline, converted by skl2onnx. Unpickling
                     runs code: refused unless the trainer's `allow_pickle_import` is on
    xgboost          XGBoost's JSON model (`save_model("model.json")`), converted by onnxmltools
    lightgbm         LightGBM's text model (`save_model("model.txt")`), converted by onnxmltools

Every failure the caller can fix is an InvalidArgument with a short reason; a missing converter
library is a FailedPrecondition naming the extra that installs it. Everything here is CPU-bound:
call it in a worker thread."""

from __future__ import annotations

import io
import pickle
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline

from cascade.errors import FailedPrecondition, InvalidArgument
from cascade.services.trainer.boosting import (
    IMPORT_EXTRA,
    first_line,
    lightgbm_float32_thresholds,
    onnxmltools_convert,
    optional,
)
from cascade.services.trainer.training import (
    INPUT_NAME,
    Predictor,
    check_parity,
    export_onnx,
    parity_reference,
)
from cascade.training_spec import Task

__all__ = ["IMPORT_EXTRA", "ImportedModel", "ModelFormat", "convert_and_check", "parity_rows_from_csv"]

ModelFormat = Literal["onnx", "sklearn_pickle", "xgboost", "lightgbm"]

MAX_PARITY_ROWS = 1000


@dataclass(frozen=True)
class ImportedModel:
    onnx_bytes: bytes
    parity_max_difference: float
    parity_rows: int
    parity_reference: dict[str, list[list[float]]]
    versions: dict[str, str]


def convert_and_check(
    data: bytes,
    model_format: ModelFormat,
    features: list[str],
    task: Task,
    rows: np.ndarray,
    allow_pickle: bool = False,
) -> ImportedModel:
    """The model as ONNX with one float input named like Cascade's own exports, and the largest
    difference between it and the original on `rows` (float32, one column per feature)."""
    if len(rows) == 0:
        raise InvalidArgument("no parity rows: give a reference dataset or parity rows")
    rows = rows[:MAX_PARITY_ROWS].astype(np.float32)
    if model_format == "onnx":
        onnx_bytes = _checked_onnx(data, len(features), task, rows)
        original: Predictor = _OnnxPredictor(onnx_bytes)
        gap = 0.0  # nothing was converted: the file is the model
    else:
        original, onnx_bytes = _convert(data, model_format, features, task, allow_pickle)
        gap = check_parity(original, onnx_bytes, rows, task, error=InvalidArgument)
    return ImportedModel(
        onnx_bytes=onnx_bytes,
        parity_max_difference=gap,
        parity_rows=len(rows),
        parity_reference=parity_reference(original, rows, task),
        versions=_versions(model_format),
    )


def parity_rows_from_csv(data: bytes, features: list[str]) -> np.ndarray:
    """The features' columns of a CSV with a header, in the model's column order."""
    import pandas as pd

    try:
        frame = pd.read_csv(io.BytesIO(data))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"parity rows are not a readable CSV: {exc}") from exc
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise InvalidArgument(f"parity rows lack feature columns {missing[:5]}")
    try:
        return frame[features].to_numpy(dtype=np.float32)
    except ValueError as exc:
        raise InvalidArgument(f"parity rows hold non-numeric values: {exc}") from exc


def _convert(
    data: bytes, model_format: ModelFormat, features: list[str], task: Task, allow_pickle: bool
) -> tuple[Predictor, bytes]:
    if model_format == "sklearn_pickle":
        pipeline = _unpickled_pipeline(data, allow_pickle)
        _check_width(getattr(pipeline, "n_features_in_", None), len(features))
        try:
            return pipeline, export_onnx(pipeline, len(features), task)
        except Exception as exc:  # skl2onnx raises many kinds for an estimator it cannot convert
            raise InvalidArgument(f"skl2onnx cannot convert this model: {exc}") from exc
    if model_format == "xgboost":
        return _xgboost(data, features, task)
    return _lightgbm(data, features, task)


def _unpickled_pipeline(data: bytes, allow_pickle: bool) -> Pipeline:
    if not allow_pickle:
        raise FailedPrecondition(
            "pickle import is off on this trainer: unpickling runs arbitrary code "
            "(set CASCADE_TRAINER_ALLOW_PICKLE_IMPORT=true to trust the callers who may import)"
        )
    try:
        model = pickle.loads(data)  # only when the operator allows it: see the module docstring
    except Exception as exc:
        raise InvalidArgument(f"not a readable pickle: {type(exc).__name__}") from exc
    if isinstance(model, Pipeline):
        return model
    if isinstance(model, BaseEstimator) and hasattr(model, "predict"):
        return Pipeline([("model", model)])
    raise InvalidArgument(f"the pickle holds a {type(model).__name__}, not a scikit-learn estimator")


def _xgboost(data: bytes, features: list[str], task: Task) -> tuple[Predictor, bytes]:
    xgboost, onnxmltools = optional("xgboost"), optional("onnxmltools")
    model = xgboost.XGBClassifier() if task == "classification" else xgboost.XGBRegressor()
    try:
        model.load_model(bytearray(data))
    except Exception as exc:  # XGBoostError: not a model, or not one saved as JSON/UBJSON
        raise InvalidArgument(f"cannot load the XGBoost model: {first_line(exc)}") from exc
    booster = model.get_booster()
    _check_width(booster.num_features(), len(features))
    _check_names(booster.feature_names, features)
    # The converter reads feature names back from the trees; by position they match the input.
    booster.feature_names = None
    converted = onnxmltools_convert(
        onnxmltools.convert_xgboost, model, len(features), INPUT_NAME, InvalidArgument
    )
    return model, converted


def _lightgbm(data: bytes, features: list[str], task: Task) -> tuple[Predictor, bytes]:
    lightgbm, onnxmltools = optional("lightgbm"), optional("onnxmltools")
    try:
        booster = lightgbm.Booster(model_str=data.decode("utf-8"))
    except Exception as exc:  # LightGBMError, UnicodeDecodeError
        raise InvalidArgument(f"not a LightGBM text model: {first_line(exc)}") from exc
    _check_width(booster.num_feature(), len(features))
    names = booster.feature_name()
    # LightGBM saves "mean radius" as "mean_radius"; unnamed columns as Column_0, Column_1, ...
    _check_names(
        None if names == [f"Column_{i}" for i in range(len(names))] else names,
        [re.sub(r"\s", "_", feature) for feature in features],
    )
    objective = str(booster.dump_model().get("objective", "")).split(" ")[0]
    if (task == "classification") != (objective in ("binary", "multiclass", "multiclassova")):
        raise InvalidArgument(f"a LightGBM {objective or 'unknown'} objective is not a {task} model")
    converted = onnxmltools_convert(
        onnxmltools.convert_lightgbm,
        lightgbm_float32_thresholds(booster),
        len(features),
        INPUT_NAME,
        InvalidArgument,
        zipmap=False,
    )
    return _LightGbmPredictor(booster, task), converted


class _LightGbmPredictor:
    """A LightGBM booster answering like a scikit-learn model: labels, and per-class probabilities."""

    def __init__(self, booster: Any, task: Task) -> None:
        self.booster = booster
        self.task = task

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        raw = np.asarray(self.booster.predict(rows), dtype=np.float64)
        return np.column_stack([1.0 - raw, raw]) if raw.ndim == 1 else raw

    def predict(self, rows: np.ndarray) -> np.ndarray:
        if self.task == "regression":
            return np.asarray(self.booster.predict(rows), dtype=np.float64)
        return np.asarray(np.argmax(self.predict_proba(rows), axis=1), dtype=np.int64)


class _OnnxPredictor:
    """An ONNX model's own answers, as the parity reference the validator rechecks."""

    def __init__(self, onnx_bytes: bytes) -> None:
        self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])

    def _run(self, rows: np.ndarray) -> list[Any]:
        outputs: list[Any] = self.session.run(None, {self.session.get_inputs()[0].name: rows})
        return outputs

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self._run(rows)[0]).ravel()

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self._run(rows)[1])


def _checked_onnx(data: bytes, width: int, task: Task, rows: np.ndarray) -> bytes:
    """An ONNX file serving and the validator can use: one float input of `width` columns (renamed
    to Cascade's input name), a label per row first and, for a classifier, probabilities second."""
    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model)
    except Exception as exc:  # DecodeError, ValidationError
        raise InvalidArgument(f"not a valid ONNX model: {first_line(exc)}") from exc
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1:
        raise InvalidArgument(f"the ONNX model must take one input tensor, not {len(inputs)}")
    dims = inputs[0].type.tensor_type.shape.dim
    declared = dims[-1].dim_value if len(dims) == 2 else None
    if len(dims) != 2 or (declared and declared != width):
        raise InvalidArgument(
            f"the ONNX input must be [rows, {width}] for {width} features, "
            f"not {[d.dim_value or d.dim_param or '?' for d in dims]}"
        )
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise InvalidArgument("the ONNX input must be float32")
    _rename_input(model, inputs[0].name, INPUT_NAME)
    checked: bytes = model.SerializeToString()
    try:
        outputs = ort.InferenceSession(checked, providers=["CPUExecutionProvider"]).run(
            None, {INPUT_NAME: rows}
        )
    except Exception as exc:  # onnxruntime's Fail/InvalidArgument: the graph does not run on the rows
        raise InvalidArgument(f"the ONNX model does not run on the parity rows: {first_line(exc)}") from exc
    if np.asarray(outputs[0]).size != len(rows):
        raise InvalidArgument(f"the ONNX model's first output must hold one value per row ({len(rows)})")
    if task == "classification" and (len(outputs) < 2 or np.asarray(outputs[1]).ndim != 2):
        raise InvalidArgument(
            "an ONNX classifier must answer labels first and a [rows, classes] probability tensor second"
        )
    return checked


def _rename_input(model: onnx.ModelProto, old: str, new: str) -> None:
    if old == new:
        return
    model.graph.input[[i.name for i in model.graph.input].index(old)].name = new
    for node in model.graph.node:
        node.input[:] = [new if name == old else name for name in node.input]


def _check_width(declared: int | None, width: int) -> None:
    if declared is not None and int(declared) != width:
        raise InvalidArgument(f"the model reads {declared} features, but {width} were given")


def _check_names(model_names: list[str] | None, features: list[str]) -> None:
    """A model that knows its column names must read them in the features' order."""
    if model_names and list(model_names) != features:
        differ = next(i for i, (a, b) in enumerate(zip(model_names, features, strict=True)) if a != b)
        raise InvalidArgument(
            f"the model's feature {differ} is {model_names[differ]!r}, the features say {features[differ]!r}"
        )


def _versions(model_format: ModelFormat) -> dict[str, str]:
    packages = {
        "onnx": ["onnx", "onnxruntime"],
        "sklearn_pickle": ["scikit-learn", "skl2onnx", "onnxruntime"],
        "xgboost": ["xgboost", "onnxmltools", "onnxruntime"],
        "lightgbm": ["lightgbm", "onnxmltools", "onnxruntime"],
    }[model_format]
    found = {}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found
