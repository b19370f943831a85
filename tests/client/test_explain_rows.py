"""The SDK's explain takes rows as the model's features by name: a DataFrame's columns in any order
(others ignored) or a dict for one row, put in the model's order; what cannot be matched is
InvalidArgument naming it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cascade.client.explain import feature_rows
from cascade.errors import InvalidArgument

FEATURES = ("mean radius", "mean texture", "area")


def test_columns_by_name_in_any_order() -> None:
    frame = pd.DataFrame(
        {"area": [3.0, 6.0], "target": [0, 1], "mean texture": [2.0, 5.0], "mean radius": [1, 4]}
    )

    rows = feature_rows("m", FEATURES, frame)

    np.testing.assert_array_equal(rows, [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert rows.dtype == np.float64


def test_a_dict_is_one_row_and_an_array_goes_as_it_is() -> None:
    np.testing.assert_array_equal(
        feature_rows("m", FEATURES, {"area": 3, "mean radius": 1, "mean texture": 2}), [[1, 2, 3]]
    )
    array = np.arange(3.0).reshape(1, 3)
    assert feature_rows("m", (), array) is array


@pytest.mark.parametrize(
    ("features", "data", "says"),
    [
        (FEATURES, {"mean radius": 1.0}, "no value for feature(s) mean texture, area of model 'm'"),
        ((), {"a": 1.0}, "does not name its features"),
        (FEATURES, {"mean radius": "x", "mean texture": 2, "area": 3}, "needs a number"),
    ],
)
def test_what_cannot_be_matched_is_invalid_argument(
    features: tuple[str, ...], data: dict[str, object], says: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        feature_rows("m", features, data)  # type: ignore[arg-type]
    assert says in str(refused.value)
