"""`cascade models show NAME/VERSION`: a version's global attribution printed beside its
permutation importance, the most attributed features first."""

from __future__ import annotations

import json

from cascade.cli.models import _format_version
from cascade.client.records import ModelVersion
from tests.records import model_version


def _tagged(tags: dict[str, str]) -> ModelVersion:
    # As the CLI test had it: a version not yet judged by the validator.
    return model_version(tags=tags, validation_passed=None, validation_report_json="")


def _rows(text: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  attribution:"))
    return [line.split() for line in lines[start + 2 :] if line.startswith("    ")]


def test_global_attribution_is_printed_beside_permutation_importance() -> None:
    attribution = {
        "method": "linear",
        "output_space": "margin",
        "rows": 114,
        "mean_abs": {"texture": 0.25, "radius": 0.75},
    }
    text = _format_version(
        _tagged(
            {
                "global_attribution": json.dumps(attribution),
                "feature_importance": json.dumps({"radius": 0.08, "texture": 0.01, "smoothness": 0.0}),
            }
        )
    )
    assert (
        "  attribution: mean |attribution| (linear Shapley values, margin space, 114 held-out rows)" in text
    )
    assert _rows(text)[:2] == [["radius", "0.75", "75.0%", "0.08"], ["texture", "0.25", "25.0%", "0.01"]]


def test_a_version_without_attribution_still_shows_its_permutation_importance() -> None:
    text = _format_version(_tagged({"feature_importance": json.dumps({"a": 0.01, "b": 0.2})}))
    assert "no global attribution on this version" in text
    assert _rows(text)[:2] == [["b", "-", "-", "0.2"], ["a", "-", "-", "0.01"]]


def test_a_version_with_neither_prints_no_attribution_section() -> None:
    assert "attribution:" not in _format_version(_tagged({}))
