import numpy as np
import pandas as pd
import pytest

from services.ingest.cleaning import Schema, clean, infer_schema, read_csv
from shared.errors import InvalidArgument


def test_schema_is_inferred_from_the_first_batch() -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0], "target": [0, 1]})
    assert infer_schema(frame, "target", 20) == Schema(["a", "b"], "target", "classification")
    frame["target"] = [0.5, 1.7]
    assert infer_schema(frame, "target", 20).task == "regression"


def test_a_missing_target_column_is_a_clear_error() -> None:
    with pytest.raises(InvalidArgument, match="target column 'y' is missing"):
        infer_schema(pd.DataFrame({"a": [1]}), "y", 20)


def test_cleaning_rejects_bad_rows_with_reasons_and_drops_duplicates() -> None:
    csv = b"a,b,target\n1,2,0\nabc,2,1\n,3,0\ninf,1,1\n1,2,0\n5,6,1\n7,8,0.5\n"
    batch = clean(read_csv(csv), Schema(["a", "b"], "target", "classification"))
    report = batch.report()
    assert (report["rows_received"], report["rows_accepted"], report["rows_duplicate"]) == (7, 2, 1)
    assert [(r["row"], r["reason"]) for r in report["rejected"]] == [
        (1, "a: not a number ('abc')"),
        (2, "a: missing"),
        (3, "a: infinite"),
        (6, "target: class label 0.5 is not an integer"),
    ]
    assert batch.rows.to_numpy().tolist() == [[1.0, 2.0, 0.0], [5.0, 6.0, 1.0]]
    assert batch.rejected[0].values == {"a": "abc", "b": "2", "target": "1"}


def test_a_batch_without_the_schema_columns_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"lacks columns \['b'\]"):
        clean(pd.DataFrame({"a": [1.0], "target": [0]}), Schema(["a", "b"], "target", "classification"))


def test_cleaned_rows_are_float64_in_schema_order() -> None:
    frame = pd.DataFrame({"target": [1, 0], "b": [2, 4], "a": [1, 3]})
    rows = clean(frame, Schema(["a", "b"], "target", "classification")).rows
    assert list(rows.columns) == ["a", "b", "target"]
    assert all(dtype == np.float64 for dtype in rows.dtypes)
