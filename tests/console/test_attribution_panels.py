"""The console's attribution panels, run by Streamlit's AppTest on records as the pages receive
them: a version's global attribution beside its permutation importance (Models), and a drift
report's attribution shift (Drift)."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from cascade.console.views.attribution import importance_frame
from tests.records import model_version

ATTRIBUTION = {
    "method": "tree",
    "output_space": "margin",
    "rows": 114,
    "mean_abs": {"worst radius": 0.6, "mean texture": 0.3, "area error": 0.1},
}
IMPORTANCE = {"worst radius": 0.05, "mean texture": 0.01, "area error": 0.002, "smoothness": 0.0}


def _charts(app: AppTest) -> int:
    """Altair charts drawn (Streamlit names the element by how the chart is sent)."""
    return len(app.get("vega_lite_chart")) + len(app.get("arrow_vega_lite_chart"))


def test_the_frame_ranks_by_attribution_and_keeps_permutation_importance_beside_it() -> None:
    tags = {"global_attribution": json.dumps(ATTRIBUTION), "feature_importance": json.dumps(IMPORTANCE)}
    frame = importance_frame(model_version(tags=tags))
    assert list(frame["feature"]) == ["worst radius", "mean texture", "area error", "smoothness"]
    assert list(frame["attribution share"][:3]) == pytest.approx([0.6, 0.3, 0.1])
    assert frame["permutation importance"].tolist() == [0.05, 0.01, 0.002, 0.0]
    assert frame["mean |attribution|"].isna().tolist() == [False, False, False, True]


def test_without_attribution_the_frame_ranks_by_permutation_importance() -> None:
    frame = importance_frame(model_version(tags={"feature_importance": json.dumps({"a": 0.01, "b": 0.2})}))
    assert list(frame["feature"]) == ["b", "a"]
    assert frame["mean |attribution|"].isna().all()


def _models_panel(tags_json: str) -> None:
    import json

    from cascade.client.records import TrainingRun
    from cascade.console.views import attribution
    from tests.records import model_version

    version = model_version(tags=json.loads(tags_json), run=TrainingRun("run", {}, {}, 0, 1.5, ""))
    attribution.render_version([version], "cancer")


def test_the_models_panel_draws_the_global_attribution_beside_permutation_importance() -> None:
    tags = {"global_attribution": json.dumps(ATTRIBUTION), "feature_importance": json.dumps(IMPORTANCE)}
    app = AppTest.from_function(_models_panel, args=(json.dumps(tags),), default_timeout=30)
    app.run()
    assert not app.exception, [e.message for e in app.exception]
    assert [s.value for s in app.subheader] == ["What the model relies on"]
    caption = " ".join(c.value for c in app.caption)
    assert (
        "over 114 held-out rows" in caption and "tree Shapley values" in caption and "margin space" in caption
    )
    table = app.dataframe[0].value
    assert list(table["feature"]) == ["worst radius", "mean texture", "area error", "smoothness"]
    assert "permutation importance" in table.columns
    assert _charts(app) == 1


def test_a_version_without_attribution_says_so_and_shows_its_importance() -> None:
    tags = {"feature_importance": json.dumps(IMPORTANCE)}
    app = AppTest.from_function(_models_panel, args=(json.dumps(tags),), default_timeout=30)
    app.run()
    assert not app.exception, [e.message for e in app.exception]
    assert "has no global attribution" in " ".join(c.value for c in app.caption)
    assert app.dataframe[0].value["feature"].iloc[0] == "worst radius"
    assert _charts(app) == 0


def _drift_panel(shifts: list[tuple[str, float, float]], note: str) -> None:
    from cascade.client.records import AttributionShift, DriftReport
    from cascade.console.views import attribution

    report = DriftReport(
        model="cancer",
        model_version=2,
        reference_dataset_version="a" * 64,
        reference_rows=455,
        window_size=200,
        predictions_seen=400,
        features=(),
        prediction=None,
        dataset_drifted=True,
        performance=None,
        computed_at=None,
        attribution_shift=tuple(AttributionShift(*shift) for shift in shifts),
        attribution_note=note,
    )
    attribution.render_shift(report)


def test_the_drift_panel_names_the_top_mover_and_draws_both_shares() -> None:
    shifts = [("worst radius", 0.2, 0.55), ("mean texture", 0.3, 0.2)]
    app = AppTest.from_function(_drift_panel, args=(shifts, "tree Shapley attributions"), default_timeout=30)
    app.run()
    assert not app.exception, [e.message for e in app.exception]
    assert "**worst radius** moved most: 20.0%" in app.markdown[0].value
    assert "55.0% in the window" in app.markdown[0].value
    table = app.dataframe[0].value
    assert list(table["feature"]) == ["worst radius", "mean texture"]
    assert table["moved"].tolist() == pytest.approx([0.35, -0.1])
    assert _charts(app) == 1


def test_an_unexplained_drift_shows_the_monitors_reason() -> None:
    why = "not explained: ExplainError: needs 120000 evaluations, budget 50000"
    app = AppTest.from_function(_drift_panel, args=([], why), default_timeout=30)
    app.run()
    assert not app.exception, [e.message for e in app.exception]
    assert why in [c.value for c in app.caption]
    assert len(app.dataframe) == 0
