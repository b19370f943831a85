"""A dataset's declared shape: typed features, the target, the task and the cleaning policy.

A schema is either declared (`RegisterDataset`, `cascade datasets register`) or, when a dataset
gets its first batch without one, inferred from that batch: every column but the target is a
numeric feature and the policy is the strict default (reject missing values, nothing else).

Every value is stored as float64, so the trainer and the monitor read any dataset unchanged:
integers and booleans (0/1) as themselves, categories as their code, the index of the category in
`Feature.categories` (and `len(categories)` for "other" when unknown categories are mapped).

As JSON (the format of `cascade datasets register NAME --schema schema.json`)::

    {"target": "label", "task": "classification",
     "features": [{"name": "age", "type": "integer", "min": 0, "max": 120},
                  {"name": "colour", "type": "categorical", "categories": ["red", "green"]},
                  {"name": "smoker", "type": "boolean"},
                  {"name": "income", "type": "numeric"}],
     "policy": {"missing": "impute", "impute": "median", "out_of_range": "clip",
                "outliers": "iqr", "outlier_threshold": 1.5, "outlier_action": "flag",
                "unknown_category": "other"}}
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, cast, get_args

from cascade.errors import InvalidArgument

__all__ = [
    "MAX_COLUMN_NAME_CHARS",
    "OTHER",
    "Feature",
    "FeatureType",
    "Policy",
    "Schema",
    "Task",
    "validate_dataset_name",
]

Task = Literal["classification", "regression"]
FeatureType = Literal["numeric", "integer", "categorical", "boolean"]
MissingAction = Literal["drop", "impute"]
Imputer = Literal["mean", "median", "mode", "constant"]
Action = Literal["flag", "clip", "reject"]
OutlierMethod = Literal["none", "zscore", "iqr"]
UnknownCategory = Literal["reject", "other"]

# The category unknown values are mapped to under `unknown_category: other`.
OTHER = "__other__"

# Column names travel in schemas, profiles and (the target) in data-arrived events: bounded, so
# their size is too.
MAX_COLUMN_NAME_CHARS = 256

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def validate_dataset_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise InvalidArgument(f"invalid dataset name {name!r}: use [A-Za-z0-9][A-Za-z0-9_.-]*")
    return name


def _check_column_name(name: str, what: str) -> None:
    if not name:
        raise InvalidArgument(f"a {what} needs a name")
    if len(name) > MAX_COLUMN_NAME_CHARS:
        raise InvalidArgument(
            f"{what} name {name[:40]!r}... has {len(name)} characters; the limit is {MAX_COLUMN_NAME_CHARS}"
        )


def _choice(value: Any, allowed: Any, what: str) -> Any:
    options = get_args(allowed)
    if value not in options:
        raise InvalidArgument(f"{what} must be one of {list(options)}, not {value!r}")
    return value


@dataclass(frozen=True)
class Feature:
    name: str
    type: FeatureType = "numeric"
    min: float | None = None
    max: float | None = None
    # The allowed values of a categorical feature, in code order.
    categories: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_column_name(self.name, "feature")
        _choice(self.type, FeatureType, f"type of feature {self.name!r}")
        if self.type == "categorical" and not self.categories:
            raise InvalidArgument(f"categorical feature {self.name!r} needs its categories")
        if self.type != "categorical" and self.categories:
            raise InvalidArgument(f"only categorical features have categories ({self.name!r})")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise InvalidArgument(f"feature {self.name!r}: min {self.min} > max {self.max}")

    @property
    def numeric(self) -> bool:
        return self.type in ("numeric", "integer")


@dataclass(frozen=True)
class Policy:
    missing: MissingAction = "drop"
    impute: Imputer = "mean"
    impute_constant: float = 0.0
    out_of_range: Action = "reject"
    outliers: OutlierMethod = "none"
    # |z| above this for "zscore"; the IQR multiple beyond the quartiles for "iqr".
    outlier_threshold: float = 0.0
    outlier_action: Action = "flag"
    unknown_category: UnknownCategory = "reject"

    def __post_init__(self) -> None:
        _choice(self.missing, MissingAction, "policy.missing")
        _choice(self.impute, Imputer, "policy.impute")
        _choice(self.out_of_range, Action, "policy.out_of_range")
        _choice(self.outliers, OutlierMethod, "policy.outliers")
        _choice(self.outlier_action, Action, "policy.outlier_action")
        _choice(self.unknown_category, UnknownCategory, "policy.unknown_category")
        if self.outlier_threshold < 0:
            raise InvalidArgument("policy.outlier_threshold must be >= 0")

    @property
    def threshold(self) -> float:
        """The outlier threshold, defaulting to 3 standard deviations or 1.5 IQR."""
        if self.outlier_threshold:
            return self.outlier_threshold
        return 3.0 if self.outliers == "zscore" else 1.5


@dataclass(frozen=True)
class Schema:
    features: tuple[Feature, ...]
    target: str
    task: Task
    policy: Policy = field(default_factory=Policy)
    # False when inferred from a first batch rather than registered.
    declared: bool = False

    def __post_init__(self) -> None:
        _choice(self.task, Task, "task")
        if not self.target:
            raise InvalidArgument("a schema needs a target")
        _check_column_name(self.target, "target")
        if not self.features:
            raise InvalidArgument("a schema needs at least one feature")
        names = self.names
        if len(set(names)) != len(names) or self.target in names:
            raise InvalidArgument("feature names must be unique and differ from the target")

    @classmethod
    def implicit(cls, names: list[str], target: str, task: Task) -> Schema:
        """The schema of a dataset nobody declared: numeric features, missing values rejected."""
        return cls(tuple(Feature(name) for name in names), target, task)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def columns(self) -> list[str]:
        return [*self.names, self.target]

    def to_dict(self) -> dict[str, Any]:
        features = []
        for feature in self.features:
            entry: dict[str, Any] = {"name": feature.name, "type": feature.type}
            if feature.min is not None:
                entry["min"] = feature.min
            if feature.max is not None:
                entry["max"] = feature.max
            if feature.categories:
                entry["categories"] = list(feature.categories)
            features.append(entry)
        return {
            "features": features,
            "target": self.target,
            "task": self.task,
            "policy": asdict(self.policy),
            "declared": self.declared,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, declared: bool | None = None) -> Schema:
        """From `to_dict`'s form, or from the stored form of older versions (names only)."""
        try:
            features = tuple(
                Feature(name=f)
                if isinstance(f, str)
                else Feature(
                    name=str(f["name"]),
                    type=cast(FeatureType, f.get("type", "numeric")),
                    min=None if f.get("min") is None else float(f["min"]),
                    max=None if f.get("max") is None else float(f["max"]),
                    categories=tuple(str(c) for c in f.get("categories") or ()),
                )
                for f in data["features"]
            )
            unknown = set(data.get("policy") or {}) - set(Policy.__dataclass_fields__)
            if unknown:
                raise InvalidArgument(f"unknown policy fields {sorted(unknown)}")
            return cls(
                features=features,
                target=str(data.get("target") or "target"),
                task=cast(Task, data.get("task", "classification")),
                policy=Policy(**(data.get("policy") or {})),
                declared=bool(data.get("declared", False)) if declared is None else declared,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"not a valid schema: {exc!r}") from exc
