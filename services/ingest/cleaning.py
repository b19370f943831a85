"""Parsing, validation and cleaning of one batch, with a report of every row's fate.

Each row of a batch ends up in exactly one of: accepted (perhaps repaired, perhaps flagged),
rejected (kept with its reason per row, never silently dropped), or duplicate (an exact copy of an
accepted row). The steps, in order, all vectorised over columns:

1. parse each column by its feature type; a cell that does not parse is a *type error*, an
   infinite number is *infinite*, an empty cell or NaN is *missing*, a category outside the
   declared ones is an *unknown category* (rejected, or mapped to "other" by policy);
2. out-of-range values (declared min/max): flag, clip or reject;
3. missing values: the row is dropped (rejected, with the reason) or the cell imputed with the
   mean, median or mode of the valid values of that feature in the batch's rows still kept (after
   clipping), or a constant; categorical and boolean features use the mode; a missing target
   always rejects the row;
4. outliers by z-score or IQR over the batch's rows still kept: flag, clip (to the fence) or reject;
5. a classification target must be an integer label;
6. duplicates within the batch are dropped and counted.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from cascade.errors import InvalidArgument
from cascade.services.ingest.schema import OTHER, Feature, Schema, Task

__all__ = [
    "CleanBatch",
    "ReadBatch",
    "Rejection",
    "clean",
    "infer_schema",
    "quantiles",
    "read_csv",
    "read_parquet",
    "read_records",
    "row_hashes",
    "suggest_schema",
]

_TRUE = {"true", "t", "yes", "y", "1", "1.0"}
_FALSE = {"false", "f", "no", "n", "0", "0.0"}
ISSUES = ("type_error", "infinite", "missing", "unknown_category", "out_of_range", "outlier", "bad_label")


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
    repaired: list[tuple[int, str]] = field(default_factory=list)
    flagged: list[tuple[int, str]] = field(default_factory=list)
    issues: dict[str, int] = field(default_factory=dict)
    # row_hashes(rows), computed once
    hashes: np.ndarray | None = None

    def report(self) -> dict[str, Any]:
        return {
            "rows_received": self.received,
            "rows_accepted": len(self.rows),
            "rows_repaired": len(self.repaired),
            "rows_flagged": len(self.flagged),
            "rows_rejected": len(self.rejected),
            "rows_duplicate": self.duplicates,
            "issues": dict(self.issues),
            "rejected": [{"row": r.row, "reason": r.reason} for r in self.rejected],
            "repaired": [{"row": row, "note": note} for row, note in self.repaired],
            "flagged": [{"row": row, "note": note} for row, note in self.flagged],
        }


# ---------------------------------------------------------------------------------- reading


@dataclass
class ReadBatch:
    """A batch as read: its rows, indexed by their numbers in the file, and the rows the reader
    refused (a CSV line of the wrong width, bytes that are not UTF-8), with line and reason."""

    frame: pd.DataFrame
    unreadable: list[Rejection] = field(default_factory=list)


_UNDECODABLE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of bytes not UTF-8


def read_csv(data: bytes, max_columns: int | None = None) -> ReadBatch:
    """Read a CSV file row by row: a row that cannot be read is refused with its line number and
    the reason, and the rest is read. Rows are indexed by the line they start on (the header is
    line 1), as a person sees them in an editor.

    The csv module checks each record and counts physical lines (a quoted field may span several);
    pandas then parses the file, without the refused records' lines if there are any, as it parsed
    whole files before. With `max_columns`, a wider header is refused before anything else is read."""
    body = data.removeprefix(b"\xef\xbb\xbf")
    try:
        text, undecodable = body.decode("utf-8"), False
    except UnicodeDecodeError:  # rows with bytes that are not UTF-8 are refused one by one
        text, undecodable = body.decode("utf-8", errors="surrogateescape"), True
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    width = _read_header(reader, max_columns, undecodable)
    if not undecodable and _every_record_fits(data, width):
        # The usual file, every record of the header's width: pandas alone, and if each record is
        # one line (no blank lines, no line breaks in values) its lines follow from its position.
        frame = _pandas_csv(io.BytesIO(data))
        if _physical_lines(data) == len(frame) + 1:
            frame.index = pd.RangeIndex(2, len(frame) + 2)
            return ReadBatch(frame)
    check = _RecordCheck(width, undecodable)
    check.run(reader)
    if check.refused:  # the file without the refused records' lines, split as the csv module counted
        physical = io.StringIO(text, newline="").readlines()
        for first, last in check.refused:
            physical[first - 1 : last] = [""] * (last - first + 1)
        source: io.StringIO | io.BytesIO = io.StringIO("".join(physical))
    else:
        source = io.BytesIO(data)
    frame = _pandas_csv(source)
    if len(frame) != len(check.lines):  # never seen; refuse rather than misnumber the rows
        raise InvalidArgument(
            f"not a readable CSV file: {len(frame)} rows read, {len(check.lines)} records found"
        )
    frame.index = pd.Index(check.lines, dtype="int64")
    return ReadBatch(frame, check.unreadable)


def _pandas_csv(source: io.StringIO | io.BytesIO) -> pd.DataFrame:
    try:
        return pd.read_csv(source, skipinitialspace=True)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"not a readable CSV file: {exc}") from exc


def _every_record_fits(data: bytes, width: int) -> bool:
    """Whether every record has `width` fields: a quick check in pyarrow's parallel C++ tokenizer
    (one column converted), which counts too few fields as well as too many, unlike pandas."""
    misfits: list[object] = []

    def note(row: object) -> str:
        misfits.append(row)
        return "skip"

    names = [f"c{i}" for i in range(width)]
    try:
        pa_csv.read_csv(
            io.BytesIO(data),
            read_options=pa_csv.ReadOptions(column_names=names, skip_rows=1),
            parse_options=pa_csv.ParseOptions(invalid_row_handler=note, newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                include_columns=names[:1], column_types={names[0]: pa.string()}
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return False  # the record-by-record reading says where and why
    return not misfits


def _physical_lines(data: bytes) -> int:
    """Lines as the csv module counts them (\\n, \\r\\n or \\r ends one)."""
    lone_returns = data.count(b"\r") - data.count(b"\r\n")
    return data.count(b"\n") + lone_returns + (0 if data.endswith((b"\n", b"\r")) else 1)


def _read_header(reader: Any, max_columns: int | None, undecodable: bool) -> int:
    """The header's width, after checking it: a file whose header cannot be read is refused whole."""
    try:
        header: list[str] | None = next(reader, None)
    except csv.Error as exc:
        raise InvalidArgument(f"not a readable CSV file: the header: {exc}") from exc
    if not header:
        raise InvalidArgument("not a readable CSV file: it is empty")
    if max_columns is not None and len(header) > max_columns:
        raise InvalidArgument(
            f"the batch has {len(header)} columns; the limit is {max_columns}"
            " (setting CASCADE_INGEST_MAX_COLUMNS)"
        )
    if undecodable and _UNDECODABLE.search("".join(header)):
        raise InvalidArgument("not a readable CSV file: the header is not UTF-8")
    return len(header)


@dataclass
class _RecordCheck:
    """One pass over a CSV file's records: where each good one starts, and each refused one's
    lines and reason."""

    width: int
    undecodable: bool
    lines: list[int] = field(default_factory=list)
    refused: list[tuple[int, int]] = field(default_factory=list)  # (first, last) physical line
    unreadable: list[Rejection] = field(default_factory=list)

    def run(self, reader: Any) -> None:
        while True:
            start = reader.line_num + 1
            try:
                record: list[str] = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # e.g. a field over the csv module's size limit
                if reader.line_num < start:
                    raise InvalidArgument(f"not a readable CSV file at line {start}: {exc}") from exc
                self._refuse(start, reader.line_num, f"unreadable: {exc}", {})
                continue
            if not record:  # a blank line, which pandas skips too
                continue
            if len(record) != self.width:
                few = "too few" if len(record) < self.width else "too many"
                reason = f"{few} fields: {len(record)}, the header has {self.width}"
                self._refuse(start, reader.line_num, reason, {"fields": [f[:200] for f in record[:50]]})
            elif self.undecodable and _UNDECODABLE.search("".join(record)):
                self._refuse(start, reader.line_num, "not UTF-8 text", {})
            else:
                self.lines.append(start)

    def _refuse(self, first: int, last: int, reason: str, values: dict[str, Any]) -> None:
        self.unreadable.append(Rejection(first, reason, values))
        self.refused.append((first, last))


def read_parquet(data: bytes) -> ReadBatch:
    try:
        frame = pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several unrelated types for bad files
        raise InvalidArgument(f"not a readable Parquet file: {exc}") from exc
    frame.index = pd.RangeIndex(1, len(frame) + 1)  # rows counted from 1, as a person does
    return ReadBatch(frame)


def read_records(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Records as a frame, numbered from 1 in the report (their position in the message)."""
    frame = pd.DataFrame.from_records(records)
    frame.index = pd.RangeIndex(1, len(frame) + 1)
    return frame


# ---------------------------------------------------------------------------------- schemas


def _task_of(frame: pd.DataFrame, target: str, max_classes: int) -> Task:
    if target not in frame.columns:
        raise InvalidArgument(f"target column {target!r} is missing; columns are {list(frame.columns)}")
    labels = pd.to_numeric(frame[target], errors="coerce").dropna()
    labels = labels[np.isfinite(labels)]
    is_label = (
        bool(len(labels)) and bool(np.all(labels == labels.round())) and labels.nunique() <= max_classes
    )
    return "classification" if is_label else "regression"


def infer_schema(frame: pd.DataFrame, target: str, max_classes: int) -> Schema:
    """The implicit schema of a dataset nobody declared: every other column a numeric feature."""
    task = _task_of(frame, target, max_classes)
    features = [str(c) for c in frame.columns if c != target]
    if not features:
        raise InvalidArgument("a batch needs at least one feature column besides the target")
    return Schema.implicit(features, target, task)


def suggest_schema(frame: pd.DataFrame, target: str, max_classes: int, max_categories: int = 50) -> Schema:
    """A schema to confirm before registering: types detected from the values, observed ranges left
    out (declare them deliberately), the default policy."""
    task = _task_of(frame, target, max_classes)
    features: list[Feature] = []
    for column in frame.columns:
        if column == target:
            continue
        raw = frame[column]
        present = raw[~_missing_mask(raw)]
        as_text = present.astype(str).str.strip().str.lower()
        numbers = pd.to_numeric(present, errors="coerce")
        looks_boolean = len(present) and as_text.isin(_TRUE | _FALSE).all() and as_text.nunique() <= 2
        if looks_boolean and (
            pd.api.types.is_bool_dtype(raw) or not as_text.isin({"0", "1", "0.0", "1.0"}).all()
        ):
            features.append(Feature(str(column), "boolean"))
            continue
        if len(present) and numbers.notna().all():
            finite = numbers[np.isfinite(numbers)]
            integral = bool(np.all(finite == np.round(finite)))
            integer = integral and not pd.api.types.is_float_dtype(raw)
            features.append(Feature(str(column), "integer" if integer else "numeric"))
        elif present.astype(str).nunique() <= max_categories:
            categories = tuple(sorted(present.astype(str).str.strip().unique()))
            features.append(Feature(str(column), "categorical", categories=categories or ("",)))
        else:
            raise InvalidArgument(
                f"column {column!r} is neither numeric nor categorical"
                f" (more than {max_categories} distinct values)"
            )
    if not features:
        raise InvalidArgument("a batch needs at least one feature column besides the target")
    return Schema(tuple(features), target, task)


# ---------------------------------------------------------------------------------- cleaning


def _missing_mask(raw: pd.Series) -> np.ndarray:
    missing = raw.isna().to_numpy()
    if raw.dtype == object:
        missing = missing | (raw.astype(str).str.strip() == "").to_numpy()
    return missing


@dataclass
class _Column:
    values: np.ndarray  # float64, NaN where not valid
    missing: np.ndarray
    type_error: np.ndarray
    infinite: np.ndarray
    unknown: np.ndarray


def _parse(raw: pd.Series, feature: Feature | None) -> _Column:
    """One column as float64, with the masks of its problems. `feature` None is the target."""
    n = len(raw)
    missing = _missing_mask(raw)
    no = np.zeros(n, dtype=bool)
    kind = feature.type if feature else "numeric"
    if kind == "categorical":
        assert feature is not None
        text = raw.astype(str).str.strip()
        codes = {category: float(code) for code, category in enumerate(feature.categories)}
        values = text.map(codes).to_numpy(dtype="float64", na_value=np.nan, copy=True)
        unknown = np.isnan(values) & ~missing
        return _Column(values, missing, no, no, unknown)
    if kind == "boolean":
        if pd.api.types.is_bool_dtype(raw):
            values = raw.to_numpy(dtype="float64")
            return _Column(values, missing, no, no, no)
        text = raw.astype(str).str.strip().str.lower()
        values = np.full(n, np.nan)
        values[text.isin(_TRUE).to_numpy()] = 1.0
        values[text.isin(_FALSE).to_numpy()] = 0.0
        type_error = np.isnan(values) & ~missing
        return _Column(values, missing, type_error, no, no)
    if pd.api.types.is_numeric_dtype(raw):
        values = raw.to_numpy(dtype="float64", na_value=np.nan)
        type_error = no
    else:
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        type_error = np.isnan(values) & ~missing
        missing = missing | (np.isnan(values) & raw.astype(str).str.strip().str.lower().eq("nan").to_numpy())
        type_error &= ~missing
    infinite = np.isinf(values)
    if kind == "integer":
        fractional = np.isfinite(values) & (values != np.round(values))
        type_error = type_error | fractional
    values = np.where(type_error | infinite, np.nan, values)
    return _Column(values, missing, type_error, infinite, no)


def _cell(raw: pd.Series, row: int) -> Any:
    value = raw.iat[row]
    return value.item() if isinstance(value, np.generic) else value


def _fmt(value: float) -> str:
    return f"{value:g}"


class _Notes:
    """Per-row notes, in column order within a row."""

    def __init__(self) -> None:
        self.by_row: dict[int, list[str]] = defaultdict(list)

    def add(self, rows: np.ndarray, note: Any) -> None:
        for row in np.flatnonzero(rows):
            self.by_row[int(row)].append(note(int(row)) if callable(note) else note)


def _impute(
    values: np.ndarray, valid: np.ndarray, how: str, constant: float, feature: Feature
) -> float | None:
    present = values[valid]
    if how == "constant":
        return constant
    if not len(present):
        return None
    if how == "mode" or feature.type in ("categorical", "boolean"):
        uniques, counts = np.unique(present, return_counts=True)
        return float(uniques[np.argmax(counts)])  # ties: the smallest value
    value = float(np.mean(present) if how == "mean" else np.median(present))
    return float(np.round(value)) if feature.type == "integer" else value


def clean(frame: pd.DataFrame, schema: Schema, unreadable: Sequence[Rejection] = ()) -> CleanBatch:
    """Validate and clean one batch by the schema's types and policy (see the module's docstring).

    The frame's index holds the rows' numbers as a person finds them in the file (the readers set
    it), and the report names rows by it; `unreadable` are rows the reader refused, reported too."""
    missing_columns = [c for c in schema.columns if c not in frame.columns]
    if missing_columns:
        raise InvalidArgument(f"batch lacks columns {missing_columns} of the dataset schema")
    cleaner = _Cleaner(frame[schema.columns].reset_index(drop=True), schema)
    cleaner.parse()
    cleaner.handle_ranges()
    cleaner.handle_missing()
    cleaner.handle_outliers()
    cleaner.check_labels()
    batch = cleaner.result(frame.index.to_numpy())
    if unreadable:
        batch.received += len(unreadable)
        batch.rejected = sorted([*unreadable, *batch.rejected], key=lambda r: r.row)
        batch.issues["unreadable"] = len(unreadable)
    return batch


class _Cleaner:
    """The state of one batch's cleaning; each step narrows `rejected` or repairs `matrix`."""

    def __init__(self, raw: pd.DataFrame, schema: Schema) -> None:
        self.raw = raw
        self.schema = schema
        self.policy = schema.policy
        self.n = len(raw)
        # Column-major: every step works column by column.
        self.matrix = np.empty((self.n, len(schema.columns)), dtype="float64", order="F")
        self.reject, self.repair, self.flag = _Notes(), _Notes(), _Notes()
        self.issues = dict.fromkeys(ISSUES, 0)
        self.rejected = np.zeros(self.n, dtype=bool)
        self.parsed: list[_Column] = []

    def parse(self) -> None:
        """Type errors, infinities and (by policy) unknown categories reject the row."""
        for index, column in enumerate(self.schema.columns):
            feature = self.schema.features[index] if index < len(self.schema.features) else None
            series = self.raw[column]
            col = _parse(series, feature)
            self.parsed.append(col)
            kind = feature.type if feature else "numeric"
            noun = {"numeric": "a number", "integer": "an integer", "boolean": "a boolean"}.get(kind, "")
            self.reject.add(
                col.type_error, lambda r, s=series, c=column, w=noun: f"{c}: not {w} ({_cell(s, r)!r})"
            )
            self.reject.add(col.infinite, f"{column}: infinite")
            self.issues["type_error"] += int(col.type_error.sum())
            self.issues["infinite"] += int(col.infinite.sum())
            self.issues["missing"] += int(col.missing.sum())
            self.issues["unknown_category"] += int(col.unknown.sum())
            self.rejected |= col.type_error | col.infinite
            if col.unknown.any() and feature is not None:
                if self.policy.unknown_category == "reject":
                    self.reject.add(
                        col.unknown, lambda r, s=series, c=column: f"{c}: unknown category {_cell(s, r)!r}"
                    )
                    self.rejected |= col.unknown
                else:
                    col.values[col.unknown] = float(len(feature.categories))
                    self.repair.add(
                        col.unknown,
                        lambda r, s=series, c=column: (
                            f"{c}: unknown category {_cell(s, r)!r} mapped to {OTHER}"
                        ),
                    )
            self.matrix[:, index] = col.values

    def handle_missing(self) -> None:
        """A missing target always rejects the row; a missing feature by policy."""
        target_missing = self.parsed[-1].missing
        self.reject.add(target_missing, f"{self.schema.target}: missing")
        self.rejected |= target_missing
        policy = self.policy
        for index, feature in enumerate(self.schema.features):
            col = self.parsed[index]
            if not col.missing.any():
                continue
            if policy.missing == "drop":
                self.reject.add(col.missing, f"{feature.name}: missing")
                self.rejected |= col.missing
                continue
            values = self.matrix[:, index]
            valid = ~np.isnan(values) & ~self.rejected & ~col.unknown
            fill = _impute(values, valid, policy.impute, policy.impute_constant, feature)
            todo = col.missing & ~self.rejected
            if fill is None:
                self.reject.add(todo, f"{feature.name}: missing, and no value in the batch to impute from")
                self.rejected |= todo
                continue
            self.matrix[todo, index] = fill
            self.repair.add(todo, f"{feature.name}: missing, imputed {policy.impute} {_fmt(fill)}")

    def handle_ranges(self) -> None:
        for index, feature in enumerate(self.schema.features):
            if not feature.numeric or (feature.min is None and feature.max is None):
                continue
            low = -np.inf if feature.min is None else feature.min
            high = np.inf if feature.max is None else feature.max
            self._judge(
                index,
                low,
                high,
                self.policy.out_of_range,
                "out_of_range",
                f"outside [{_fmt(low)}, {_fmt(high)}]",
            )

    def handle_outliers(self) -> None:
        """Outliers by z-score or IQR, judged on the batch's rows still kept."""
        policy = self.policy
        if policy.outliers == "none":
            return
        for index, feature in enumerate(self.schema.features):
            kept = self.matrix[~self.rejected, index]
            if not feature.numeric or len(kept) < 2:
                continue
            if policy.outliers == "zscore":
                mean, std = float(np.mean(kept)), float(np.std(kept))
                low, high = mean - policy.threshold * std, mean + policy.threshold * std
            else:
                q1, q3 = quantiles(np.sort(kept), [0.25, 0.75])
                low, high = q1 - policy.threshold * (q3 - q1), q3 + policy.threshold * (q3 - q1)
            bounds = (
                f"is an outlier ({policy.outliers} {_fmt(policy.threshold)}: [{_fmt(low)}, {_fmt(high)}])"
            )
            self._judge(index, low, high, policy.outlier_action, "outlier", bounds)

    def _judge(self, index: int, low: float, high: float, action: str, issue: str, what: str) -> None:
        """Flag, clip or reject the kept cells of one column outside [low, high]."""
        values = self.matrix[:, index].copy()
        outside = ~self.rejected & ((values < low) | (values > high))
        if not outside.any():
            return
        self.issues[issue] += int(outside.sum())
        name = self.schema.columns[index]

        def describe(row: int) -> str:
            return f"{name}: {_fmt(float(values[row]))} {what}"

        if action == "reject":
            self.reject.add(outside, describe)
            self.rejected |= outside
        elif action == "flag":
            self.flag.add(outside, describe)
        else:
            clipped = np.clip(values, low, high)
            self.repair.add(outside, lambda r: f"{describe(r)}, clipped to {_fmt(float(clipped[r]))}")
            self.matrix[outside, index] = clipped[outside]

    def check_labels(self) -> None:
        if self.schema.task != "classification":
            return
        labels = self.matrix[:, -1]
        fractional = ~self.rejected & (labels != np.round(labels))
        self.issues["bad_label"] += int(fractional.sum())
        target = self.schema.target
        self.reject.add(fractional, lambda r: f"{target}: class label {labels[r]} is not an integer")
        self.rejected |= fractional

    def result(self, numbers: np.ndarray) -> CleanBatch:
        """Drop duplicates within the batch (the first occurrence stays) and assemble the report,
        which names each row by its number in `numbers` (by position)."""
        kept_rows = np.flatnonzero(~self.rejected)
        kept = self.matrix if len(kept_rows) == self.n else self.matrix[kept_rows]
        accepted = pd.DataFrame(kept, columns=self.schema.columns, copy=False)
        hashes = row_hashes(accepted)
        _, first = np.unique(hashes, return_index=True)
        if len(first) < len(kept_rows):
            first.sort()
            accepted = accepted.iloc[first].reset_index(drop=True)
            hashes = hashes[first]
        unique = np.zeros(self.n, dtype=bool)
        unique[kept_rows[first]] = True
        records = self.raw.iloc[np.flatnonzero(self.rejected)]
        rejections = [
            Rejection(
                int(numbers[row]),
                "; ".join(self.reject.by_row[int(row)]),
                _jsonable(records.loc[row].to_dict()),
            )
            for row in records.index
        ]
        return CleanBatch(
            rows=accepted,
            received=self.n,
            rejected=rejections,
            duplicates=len(kept_rows) - len(first),
            repaired=[
                (int(numbers[r]), "; ".join(v)) for r, v in sorted(self.repair.by_row.items()) if unique[r]
            ],
            flagged=[
                (int(numbers[r]), "; ".join(v)) for r, v in sorted(self.flag.by_row.items()) if unique[r]
            ],
            issues={k: v for k, v in self.issues.items() if v},
            hashes=hashes,
        )


def quantiles(ordered: np.ndarray, points: list[float] | np.ndarray) -> list[float]:
    """Quantiles of sorted values, interpolated linearly (numpy's default method): sorting once is
    several times quicker than np.quantile's partitions for many points or large columns."""
    if not len(ordered):
        return [0.0 for _ in points]
    positions = np.asarray(points, dtype="float64") * (len(ordered) - 1)
    low = np.floor(positions).astype(int)
    high = np.minimum(low + 1, len(ordered) - 1)
    fraction = positions - low
    values = ordered[low] + fraction * (ordered[high] - ordered[low])
    return [float(v) for v in values]


def row_hashes(frame: pd.DataFrame) -> np.ndarray:
    """A 64-bit hash of each row's values (column order matters, the index does not)."""
    if frame.empty:
        return np.zeros(0, dtype="uint64")
    hashes: np.ndarray = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hashes


def _jsonable(values: dict[Any, Any]) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and not np.isfinite(value):
            return None if np.isnan(value) else str(value)
        return value

    cleaned = {str(k): plain(v) for k, v in values.items()}
    result: dict[str, Any] = json.loads(json.dumps(cleaned, default=str))
    return result
