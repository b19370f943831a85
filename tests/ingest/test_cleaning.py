import numpy as np
import pandas as pd
import pytest

from cascade.errors import InvalidArgument
from cascade.services.ingest.cleaning import clean, infer_schema, read_csv, suggest_schema
from cascade.services.ingest.schema import Feature, Policy, Schema


def _implicit(*names: str) -> Schema:
    return Schema.implicit(list(names), "target", "classification")


def test_the_implicit_schema_is_inferred_from_the_first_batch() -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0], "target": [0, 1]})
    assert infer_schema(frame, "target", 20) == _implicit("a", "b")
    frame["target"] = [0.5, 1.7]
    assert infer_schema(frame, "target", 20).task == "regression"


def test_a_schema_to_confirm_detects_types() -> None:
    csv = b"age,colour,smoker,income,target\n30,red,yes,1.5,0\n41,green,no,2.5,1\n52,red,no,3.0,1\n"
    schema = suggest_schema(read_csv(csv).frame, "target", 20)
    assert schema.features == (
        Feature("age", "integer"),
        Feature("colour", "categorical", categories=("green", "red")),
        Feature("smoker", "boolean"),
        Feature("income", "numeric"),
    )
    assert (schema.task, schema.declared) == ("classification", False)


def test_a_missing_target_column_is_a_clear_error() -> None:
    with pytest.raises(InvalidArgument, match="target column 'y' is missing"):
        infer_schema(pd.DataFrame({"a": [1]}), "y", 20)


def test_the_default_policy_rejects_bad_rows_with_reasons_and_drops_duplicates() -> None:
    csv = b"a,b,target\n1,2,0\nabc,2,1\n,3,0\ninf,1,1\n1,2,0\n5,6,1\n7,8,0.5\n"
    batch = clean(read_csv(csv).frame, _implicit("a", "b"))
    report = batch.report()
    assert (report["rows_received"], report["rows_accepted"], report["rows_duplicate"]) == (7, 2, 1)
    # Rows are named by their line in the file: the header is line 1.
    assert [(r["row"], r["reason"]) for r in report["rejected"]] == [
        (3, "a: not a number ('abc')"),
        (4, "a: missing"),
        (5, "a: infinite"),
        (8, "target: class label 0.5 is not an integer"),
    ]
    assert batch.rows.to_numpy().tolist() == [[1.0, 2.0, 0.0], [5.0, 6.0, 1.0]]
    assert batch.rejected[0].values == {"a": "abc", "b": 2, "target": 1.0}


MIXED_SCHEMA = Schema(
    (
        Feature("age", "integer", min=0, max=120),
        Feature("colour", "categorical", categories=("red", "green")),
        Feature("smoker", "boolean"),
        Feature("income", "numeric"),
    ),
    "label",
    "classification",
    Policy(
        missing="impute",
        impute="median",
        out_of_range="clip",
        outliers="iqr",
        outlier_action="flag",
        unknown_category="other",
    ),
)

# Good rows, repairable rows, rows to reject and a duplicate, with the exact fate of each. The median
# imputed (34) and the IQR fences are over the rows still kept at that step; notes come in step order.
MIXED_CSV = b"""age,colour,smoker,income,label
30,red,yes,100,0
40,green,no,110,1
,red,no,120,0
130,blue,true,105,1
abc,red,no,100,0
31,red,maybe,101,1
32,green,no,inf,0
33,green,no,5000,1
30,red,yes,100,0
34,red,no,102,0.5
35,red,no,103,
36,green,f,104,1
"""

MIXED_REPORT = {
    "rows_received": 12,
    "rows_accepted": 6,
    "rows_repaired": 2,
    "rows_flagged": 2,
    "rows_rejected": 5,
    "rows_duplicate": 1,
    "issues": {
        "type_error": 2,
        "infinite": 1,
        "missing": 2,
        "unknown_category": 1,
        "out_of_range": 1,
        "outlier": 2,
        "bad_label": 1,
    },
    "rejected": [
        {"row": 6, "reason": "age: not an integer ('abc')"},
        {"row": 7, "reason": "smoker: not a boolean ('maybe')"},
        {"row": 8, "reason": "income: infinite"},
        {"row": 11, "reason": "label: class label 0.5 is not an integer"},
        {"row": 12, "reason": "label: missing"},
    ],
    "repaired": [
        {"row": 4, "note": "age: missing, imputed median 34"},
        {
            "row": 5,
            "note": "colour: unknown category 'blue' mapped to __other__; "
            "age: 130 outside [0, 120], clipped to 120",
        },
    ],
    "flagged": [
        {"row": 5, "note": "age: 120 is an outlier (iqr 1.5: [25.125, 44.125])"},
        {"row": 9, "note": "income: 5000 is an outlier (iqr 1.5: [85, 129])"},
    ],
}


def test_a_mixed_batch_gets_the_exact_report() -> None:
    batch = clean(read_csv(MIXED_CSV).frame, MIXED_SCHEMA)
    assert batch.report() == MIXED_REPORT
    # Categories as codes (red 0, green 1, other 2), booleans as 0/1, repairs applied.
    assert batch.rows.to_numpy().tolist() == [
        [30.0, 0.0, 1.0, 100.0, 0.0],
        [40.0, 1.0, 0.0, 110.0, 1.0],
        [34.0, 0.0, 0.0, 120.0, 0.0],
        [120.0, 2.0, 1.0, 105.0, 1.0],
        [33.0, 1.0, 0.0, 5000.0, 1.0],
        [36.0, 1.0, 0.0, 104.0, 1.0],
    ]
    assert batch.rejected[1].values == {
        "age": "31",
        "colour": "red",
        "smoker": "maybe",
        "income": 101.0,
        "label": 1.0,
    }


@pytest.mark.parametrize(
    ("policy", "accepted", "note"),
    [
        (Policy(missing="drop"), [1.0, 2.0, 3.0, 100.0], None),
        (Policy(missing="impute", impute="mean"), [1.0, 2.0, 3.0, 100.0, 26.5], "imputed mean 26.5"),
        (Policy(missing="impute", impute="median"), [1.0, 2.0, 3.0, 100.0, 2.5], "imputed median 2.5"),
        (Policy(missing="impute", impute="mode"), [1.0, 2.0, 3.0, 100.0, 1.0], "imputed mode 1"),
        (
            Policy(missing="impute", impute="constant", impute_constant=-1),
            [1.0, 2.0, 3.0, 100.0, -1.0],
            "imputed constant -1",
        ),
    ],
)
def test_missing_values_are_dropped_or_imputed_by_policy(
    policy: Policy, accepted: list[float], note: str | None
) -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 100.0, np.nan], "target": [0, 1, 0, 1, 1]})
    batch = clean(frame, Schema((Feature("x"),), "target", "classification", policy))
    assert batch.rows["x"].tolist() == accepted
    if note is None:
        assert [(r.row, r.reason) for r in batch.rejected] == [(4, "x: missing")]
    else:
        assert batch.repaired == [(4, f"x: missing, {note}")] and not batch.rejected


@pytest.mark.parametrize(
    ("action", "kept", "rejected", "flagged"),
    [("flag", [5.0, 50.0, -3.0], 0, 2), ("clip", [5.0, 10.0, 0.0], 0, 0), ("reject", [5.0], 2, 0)],
)
def test_out_of_range_values_are_flagged_clipped_or_rejected(
    action: str, kept: list[float], rejected: int, flagged: int
) -> None:
    frame = pd.DataFrame({"x": [5.0, 50.0, -3.0], "target": [0, 1, 0]})
    policy = Policy(out_of_range=action)  # type: ignore[arg-type]
    batch = clean(frame, Schema((Feature("x", min=0, max=10),), "target", "classification", policy))
    assert batch.rows["x"].tolist() == kept
    assert (len(batch.rejected), len(batch.flagged)) == (rejected, flagged)


@pytest.mark.parametrize("method", ["zscore", "iqr"])
def test_outliers_by_zscore_or_iqr(method: str) -> None:
    values = [float(v) for v in range(20)] + [1000.0]
    frame = pd.DataFrame({"x": values, "target": [0] * 21})
    policy = Policy(outliers=method, outlier_action="reject")  # type: ignore[arg-type]
    batch = clean(frame, Schema((Feature("x"),), "target", "classification", policy))
    assert [r.row for r in batch.rejected] == [20]
    assert "is an outlier" in batch.rejected[0].reason


def test_unknown_categories_are_rejected_by_default() -> None:
    frame = pd.DataFrame({"c": ["a", "b", "z"], "target": [0, 1, 0]})
    batch = clean(
        frame, Schema((Feature("c", "categorical", categories=("a", "b")),), "target", "classification")
    )
    assert [(r.row, r.reason) for r in batch.rejected] == [(2, "c: unknown category 'z'")]
    assert batch.rows["c"].tolist() == [0.0, 1.0]


def test_a_batch_without_the_schema_columns_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"lacks columns \['b'\]"):
        clean(pd.DataFrame({"a": [1.0], "target": [0]}), _implicit("a", "b"))


def test_cleaned_rows_are_float64_in_schema_order() -> None:
    frame = pd.DataFrame({"target": [1, 0], "b": [2, 4], "a": [1, 3]})
    rows = clean(frame, _implicit("a", "b")).rows
    assert list(rows.columns) == ["a", "b", "target"]
    assert all(dtype == np.float64 for dtype in rows.dtypes)


def test_schemas_round_trip_and_refuse_nonsense() -> None:
    assert Schema.from_dict(MIXED_SCHEMA.to_dict()) == MIXED_SCHEMA
    # The stored form of datasets made before declared schemas.
    old = Schema.from_dict({"features": ["a"], "target": "t", "task": "regression"})
    assert old == Schema.implicit(["a"], "t", "regression")
    for bad, message in [
        ({"features": [{"name": "a", "type": "text"}], "target": "t", "task": "regression"}, "type of"),
        (
            {"features": [{"name": "a", "type": "categorical"}], "target": "t", "task": "regression"},
            "categories",
        ),
        ({"features": ["a"], "target": "t", "task": "clustering"}, "task"),
        ({"features": ["a"], "target": "t", "task": "regression", "policy": {"missing": "x"}}, "missing"),
        ({"features": ["a"], "target": "t", "task": "regression", "policy": {"nope": 1}}, "unknown policy"),
    ]:
        with pytest.raises(InvalidArgument, match=message):
            Schema.from_dict(bad)


def test_a_row_of_the_wrong_width_is_refused_with_its_line_and_the_rest_is_read() -> None:
    data = b'a,b,target\n1,2,0\n3,4,5,1\n"x\ny",6,1\n7,1\n\n8,9,0\n'
    read = read_csv(data)
    # A quoted field spans lines 4-5, and the blank line 7 is skipped, as a person reads the file.
    assert [(r.row, r.reason) for r in read.unreadable] == [
        (3, "too many fields: 4, the header has 3"),
        (6, "too few fields: 2, the header has 3"),
    ]
    assert read.frame.index.tolist() == [2, 4, 8]
    batch = clean(read.frame, _implicit("a", "b"), read.unreadable)
    report = batch.report()
    assert (report["rows_received"], report["rows_accepted"], report["rows_rejected"]) == (5, 2, 3)
    assert [(r["row"], r["reason"]) for r in report["rejected"]] == [
        (3, "too many fields: 4, the header has 3"),
        (4, "a: not a number ('x\\ny')"),
        (6, "too few fields: 2, the header has 3"),
    ]
    assert report["issues"]["unreadable"] == 2
    assert batch.rows.to_numpy().tolist() == [[1.0, 2.0, 0.0], [8.0, 9.0, 0.0]]


def test_a_row_that_is_not_utf8_is_refused_and_the_rest_is_read() -> None:
    read = read_csv(b"a,b,target\n1,2,0\n3,\xff\xfe,1\n5,6,1\n")
    assert [(r.row, r.reason) for r in read.unreadable] == [(3, "not UTF-8 text")]
    assert read.frame.to_numpy().tolist() == [[1, 2, 0], [5, 6, 1]]
    assert read.frame.index.tolist() == [2, 4]


def test_a_clean_file_is_read_by_pandas_with_its_line_numbers() -> None:
    read = read_csv(b"\xef\xbb\xbfa, b,target\n1.5, 2,0\n3,4,1\n")
    assert read.unreadable == []
    assert list(read.frame.columns) == ["a", "b", "target"]
    assert read.frame.index.tolist() == [2, 3]
    assert read.frame["a"].tolist() == [1.5, 3.0]


def test_a_file_wider_than_the_limit_is_refused_by_its_header() -> None:
    header = ",".join(f"f{i}" for i in range(20_000)) + ",target\n"
    with pytest.raises(InvalidArgument, match="20001 columns; the limit is 1000"):
        read_csv(header.encode() + b"0," * 20_000 + b"1\n", max_columns=1000)


def test_an_empty_file_or_an_undecodable_header_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="empty"):
        read_csv(b"")
    with pytest.raises(InvalidArgument, match="header is not UTF-8"):
        read_csv(b"a,\xff,target\n1,2,0\n")


def test_line_numbers_hold_for_blank_lines_breaks_in_values_and_crlf() -> None:
    # Each of these leaves the quick path (one record per line) for the record-by-record one.
    assert read_csv(b"a,b,target\r\n1,2,0\r\n\r\n5,6,1").frame.index.tolist() == [2, 4]
    assert read_csv(b'a,b,target\n1,2,0\n"p\nq",6,1\n7,8,0\n').frame.index.tolist() == [2, 3, 5]
    read = read_csv(b"a,b,target\r1,2,0\r3,4\r5,6,1\r")
    assert [(r.row, r.reason) for r in read.unreadable] == [(3, "too few fields: 2, the header has 3")]
    assert read.frame.index.tolist() == [2, 4]
