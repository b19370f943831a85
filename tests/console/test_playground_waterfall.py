"""The Playground's explanation of an answer: the waterfall's steps (base value, the features by
|attribution| with the rest as one step, output, each bar starting where the last ended), and the
page's "Why" section run by Streamlit's AppTest: the chart and its caption, or the note saying why
there is no explanation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from cascade.client.records import Explained, RowAttribution
from cascade.console.views.playground import waterfall_chart, waterfall_steps

FEATURES = ("mean radius", "mean texture", "area", "smoothness")


def _explained(attributions: tuple[float, ...] = (0.05, -0.3, 0.12, -0.01), base: float = 0.4) -> Explained:
    row = RowAttribution(1, "1", base, base + sum(attributions), attributions)
    return Explained("cancer", 3, "", FEATURES, "kernel", "probability", (row,), 4200, 0.5)


def test_the_steps_run_from_the_base_through_each_feature_to_the_output() -> None:
    explained = _explained()

    steps = waterfall_steps(explained, [17.99, 10.38, 1001.0, 0.1184], top=2)

    assert list(steps["step"]) == [
        "base value",
        "mean texture = 10.38",
        "area = 1001",
        "2 other features",
        "output",
    ]
    assert list(steps["effect"]) == ["base", "lowers", "raises", "raises", "output"]
    features = steps.iloc[1:-1]
    assert features["start"].iloc[0] == pytest.approx(0.4)
    # Each bar starts where the one before it ended, and the last one ends at the output.
    assert list(features["start"].iloc[1:]) == pytest.approx(list(features["end"].iloc[:-1]))
    assert features["end"].iloc[-1] == pytest.approx(explained.rows[0].output)
    assert steps["amount"].iloc[3] == pytest.approx(0.05 - 0.01)


def test_the_chart_is_a_bar_per_step() -> None:
    spec = waterfall_chart(_explained(), [1.0, 2.0, 3.0, 4.0]).to_dict()

    assert spec["mark"]["type"] == "bar"
    assert spec["encoding"]["x2"]["field"] == "end"
    assert len(next(iter(spec["datasets"].values()))) == len(FEATURES) + 2


_SCRIPT = """
from cascade.client.records import Explained, RowAttribution
from cascade.client.serving import Prediction
from cascade.console.views.playground import Answer, show_explanation

row = RowAttribution(1, "1", 0.4, 0.26, (0.05, -0.3, 0.12, -0.01))
explained = Explained("cancer", 3, "", {features}, "kernel", "probability", (row,), 4200, 0.5)
prediction = Prediction("cancer", "3", {{}})
explain = {explain}
show_explanation(
    Answer("cancer", "", prediction, [], explained if explain else None, (1.0, 2.0, 3.0, 4.0),
           "" if explain else "No explanation for this version: cancer v3 has no explanation background")
)
"""


@pytest.mark.parametrize("explain", [True, False])
def test_the_why_section(explain: bool, tmp_path: Path) -> None:
    st.cache_data.clear()
    script = tmp_path / "why.py"
    script.write_text(_SCRIPT.format(features=json.dumps(list(FEATURES)), explain=explain))

    app = AppTest.from_file(str(script), default_timeout=60)
    app.run()

    assert not app.exception, [e.message for e in app.exception]
    assert [header.value for header in app.subheader] == ["Why"]
    charts = app.get("vega_lite_chart")
    if explain:
        assert len(charts) == 1
        assert json.loads(charts[0].proto.spec)["mark"]["type"] == "bar"
        caption = " ".join(caption.value for caption in app.caption)
        assert (
            "0.4 + -0.14 = 0.26" in caption and "class 1" in caption and "4200 model evaluations" in caption
        )
    else:
        assert not charts
        assert "has no explanation background" in app.info[0].value
