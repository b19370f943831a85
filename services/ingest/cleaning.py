"""Parsing, validation and cleaning of one batch, with a report of every row's fate."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from shared.errors import InvalidArgument

Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class Schema:
    """What a dataset's rows must look like; fixed by its first batch."""

    features: list[str]
    target: str
    task: Task

    @property
    def columns(self) -> list[str]:
        return [*self.features, self.target]


@dataclass
class Rejection:
    row: int
    reason: str
    values: dict[str, Any]


@dataclass
class CleanBatch:
    rows: pd.DataFrame  # float64, schema column order
    received: int
    rejected: list[Rejection] = field(default_factory=list)
    duplicates: int = 0

    def report(self) -> dict[str, Any]:
        return {
            "rows_received": self.received,
            "rows_accepted": len(self.rows),
            "rows_rejected": len(self.rejected),
            "rows_duplicate": self.duplicates,
            "rejected": [{"row": r.row, "reason": r.reason} for r in self.rejected],
        }


def read_csv(data: bytes) -> pd.DataFrame:
    try:
        return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"not a readable CSV file: {exc}") from exc


def read_parquet(data: bytes) -> pd.DataFrame:
    try:
        return pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several unrelated types for bad files
        raise InvalidArgument(f"not a readable Parquet file: {exc}") from exc


def read_records(records: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame.from_records(records)


def infer_schema(frame: pd.DataFrame, target: str, max_classes: int) -> Schema:
    if target not in frame.columns:
        raise InvalidArgument(f"target column {target!r} is missing; columns are {list(frame.columns)}")
    features = [str(c) for c in frame.columns if c != target]
    if not features:
        raise InvalidArgument("a batch needs at least one feature column besides the target")
    labels = pd.to_numeric(frame[target], errors="coerce").dropna()
    is_label = (
        bool(len(labels)) and bool(np.all(labels == labels.round())) and labels.nunique() <= max_classes
    )
    return Schema(features=features, target=target, task="classification" if is_label else "regression")


def clean(frame: pd.DataFrame, schema: Schema) -> CleanBatch:
    """Coerce to numbers and keep the rows that are complete and finite; every other row is kept
    aside with its reason. Duplicate rows within the batch are dropped and counted."""
    missing = [c for c in schema.columns if c not in frame.columns]
    if missing:
        raise InvalidArgument(f"batch lacks columns {missing} of the dataset schema")
    raw = frame[schema.columns].reset_index(drop=True)
    numeric = raw.apply(lambda column: pd.to_numeric(column, errors="coerce")).astype("float64")
    values = numeric.to_numpy()
    finite = np.isfinite(values)
    not_a_number = raw.notna().to_numpy() & numeric.isna().to_numpy() & (raw.astype(str) != "").to_numpy()

    rejected: list[Rejection] = []
    bad_rows = np.flatnonzero(~finite.all(axis=1))
    for row in bad_rows:
        reasons = []
        for col_index, column in enumerate(schema.columns):
            if finite[row, col_index]:
                continue
            cell = raw.iat[int(row), col_index]
            if not_a_number[row, col_index]:
                reasons.append(f"{column}: not a number ({cell!r})")
            elif np.isinf(values[row, col_index]):
                reasons.append(f"{column}: infinite")
            else:
                reasons.append(f"{column}: missing")
        rejected.append(Rejection(int(row), "; ".join(reasons), _jsonable(raw.iloc[row].to_dict())))

    if schema.task == "classification":
        good = finite.all(axis=1)
        labels = values[:, -1]
        fractional = good & (labels != np.round(labels))
        for row in np.flatnonzero(fractional):
            rejected.append(
                Rejection(
                    int(row),
                    f"{schema.target}: class label {labels[row]} is not an integer",
                    _jsonable(raw.iloc[row].to_dict()),
                )
            )
        keep = good & ~fractional
    else:
        keep = finite.all(axis=1)

    accepted = numeric[keep]
    deduplicated = accepted.drop_duplicates()
    rejected.sort(key=lambda r: r.row)
    return CleanBatch(
        rows=deduplicated.reset_index(drop=True),
        received=len(raw),
        rejected=rejected,
        duplicates=len(accepted) - len(deduplicated),
    )


def _jsonable(values: dict[Any, Any]) -> dict[str, Any]:
    plain: dict[str, Any] = json.loads(json.dumps({str(k): v for k, v in values.items()}, default=str))
    return plain
