"""The Playground's reading of a pasted row: CSV with or without a header, or a JSON object, and a
clear RowError (never a traceback) for a missing feature, a non-number or a wrong shape."""

from __future__ import annotations

import pytest

from cascade.console.views.playground import RowError, class_names, parse_row

FEATURES = ["mean radius", "mean texture", "area"]


def test_csv_with_a_header_matches_by_name_and_ignores_other_columns() -> None:
    text = "area,target,mean radius,mean texture\n1001.5,0,17.99,10.38\n"
    assert parse_row(text, FEATURES) == {"mean radius": 17.99, "mean texture": 10.38, "area": 1001.5}


def test_csv_without_a_header_takes_the_features_in_order() -> None:
    assert parse_row(" 1, 2.5e1 ,3\n", FEATURES) == {"mean radius": 1.0, "mean texture": 25.0, "area": 3.0}


def test_a_json_object_by_feature_name() -> None:
    row = parse_row('{"area": 3, "mean radius": "1.5", "mean texture": 2, "extra": "x"}', FEATURES)
    assert row == {"mean radius": 1.5, "mean texture": 2.0, "area": 3.0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("mean radius,area\n1,2", "missing 1 of the model's 3 features: mean texture"),
        ("1,2", "needs 3 values"),
        ("1,abc,3", "feature 'mean texture' needs a number; got 'abc'"),
        ("1,nan,3", "feature 'mean texture' needs a number"),
        ('{"mean radius": 1, "mean texture": true, "area": 3}', "'mean texture' needs a number; got True"),
        ('{"mean radius": 1,', "not valid JSON"),
        ("[1, 2, 3]", "paste one JSON object"),
        ("a,b\n1,2\n3,4", "paste one row"),
        ("mean radius,mean texture,area\n1,2", "header names 3 columns but the row has 2"),
    ],
)
def test_bad_rows_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(RowError) as raised:
        parse_row(text, FEATURES)
    assert message in str(raised.value)


def test_class_names_come_from_the_parity_rows_labels() -> None:
    reference = {"outputs": [[0.9, 0.1], [0.2, 0.8]], "labels": [[0.0], [1.0]]}
    assert class_names(reference, 2) == ["0", "1"]
    # A class the parity rows never predicted keeps its position.
    assert class_names({"outputs": [[0.1, 0.7, 0.2]], "labels": [[5.0]]}, 3) == ["class #0", "5", "class #2"]
    assert class_names({}, 2) == ["class #0", "class #1"]


def test_a_huge_value_is_not_echoed_whole() -> None:
    huge = "x" * 100_000
    with pytest.raises(RowError) as raised:
        parse_row(f'{{"mean radius": "{huge}", "mean texture": 1, "area": 2}}', FEATURES)
    assert "mean radius" in str(raised.value) and len(str(raised.value)) < 300
