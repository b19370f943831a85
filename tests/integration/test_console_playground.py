"""The console's Playground in a real Chromium against the real stack: a pasted row gets the served
champion's answer (the same label and probabilities the SDK gets for that row) and its explanation
as a waterfall (the same base value and output as the SDK's explanation), and a malformed row gets
an error that says what is wrong, not a traceback."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from cascade import Client
from cascade.client.records import Explained
from cascade.stack import SERVICES, Stack
from tests.integration.browser import Console

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

MODEL = "console_playground"
# A page's first run (imports, the console's client) and a prediction can take seconds on a busy machine.
WAIT = 30_000


def test_a_pasted_row_gets_the_served_answer_and_a_bad_row_an_error(
    stack: Stack, console: Console, page: object
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    frame = load_breast_cancer(as_frame=True).frame.sample(frac=1.0, random_state=3).reset_index(drop=True)
    addresses = {name: stack.address(name) for name in SERVICES}
    with Client(addresses, security=stack.client_security) as client:
        upload = client.upload(frame, MODEL)
        champion = client.follow(upload.dataset_version, MODEL, wait_seconds=240)
        row = frame.iloc[[7]]
        expected = client.predict(MODEL, row.drop(columns="target"))
        explained = client.explain(MODEL, row.drop(columns="target"))
    assert expected.version == str(champion.version)
    label = int(np.asarray(expected["label"]).reshape(-1)[0])
    probabilities = next(values for values in expected.outputs.values() if values.ndim == 2)[0]

    page.goto(console.url(f"playground?model={MODEL}"))
    expect(page.get_by_role("heading", name="Playground", exact=True)).to_be_visible(timeout=WAIT)
    # The boxes start from the training data's medians; the pasted row (CSV with its header and
    # the target column, which the model does not take) is sent instead.
    expect(page.get_by_label("mean radius", exact=True)).not_to_have_value("", timeout=WAIT)
    paste = page.get_by_role("textbox", name="Paste a row")
    paste.fill(row.to_csv(index=False))
    page.get_by_role("button", name="Predict").click()

    expect(page.get_by_role("heading", name="Prediction", exact=True)).to_be_visible(timeout=WAIT)
    metrics = page.locator("[data-testid='stMetric']")
    expect(metrics.filter(has_text="Predicted label").locator("[data-testid='stMetricValue']")).to_have_text(
        str(label)
    )
    expect(metrics.filter(has_text="Answered by").locator("[data-testid='stMetricValue']")).to_have_text(
        f"v{champion.version}"
    )
    expect(page.get_by_role("heading", name="Probabilities", exact=True)).to_be_visible()
    table = page.locator("[data-testid='stTable']")
    assert len(probabilities) == 2
    for index, probability in enumerate(probabilities):  # breast_cancer's classes: 0 and 1, in order
        named = table.get_by_role("row").filter(
            has=page.get_by_role("rowheader", name=str(index), exact=True)
        )
        expect(named.get_by_role("cell")).to_have_text(f"{probability:.4f}")
    _expect_the_waterfall(page, explained, label)
    expect(page.locator("[data-testid='stException']")).to_have_count(0)

    # One value that is not a number: an error naming the feature, and the answer is gone.
    bad = row.drop(columns="target").astype(object)
    bad.iloc[0, 1] = "abc"
    paste.fill(bad.to_csv(index=False))
    page.get_by_role("button", name="Predict").click()
    error = page.locator("[data-testid='stAlertContentError']")
    expect(error).to_contain_text("Cannot send this row", timeout=WAIT)
    expect(error).to_contain_text(f"feature '{bad.columns[1]}' needs a number; got 'abc'")
    expect(page.get_by_role("heading", name="Prediction", exact=True)).to_have_count(0)

    # The version asked by number (the page keeps it in the URL) answers too.
    page.locator("[data-testid='stSelectbox']").filter(has_text="Version").click()
    page.get_by_role("option", name=f"v{champion.version} (champion, loaded)").click()
    expect(page).to_have_url(
        f"{console.url('playground')}?model={MODEL}&version={champion.version}", timeout=WAIT
    )
    page.get_by_role("textbox", name="Paste a row").fill(row.to_csv(index=False))
    page.get_by_role("button", name="Predict").click()
    expect(metrics.filter(has_text="Answered by").locator("[data-testid='stMetricValue']")).to_have_text(
        f"v{champion.version}"
    )
    expect(
        page.get_by_text(f"{MODEL} v{champion.version} answered (v{champion.version} was asked).")
    ).to_be_visible()
    expect(page.locator("[data-testid='stException']")).to_have_count(0)


def _expect_the_waterfall(page: Any, explained: Explained, label: int) -> None:
    """Why: the waterfall of the row's attributions, from the base value to the output, with the
    numbers of the SDK's explanation of the same row."""
    from playwright.sync_api import expect

    expect(page.get_by_role("heading", name="Why", exact=True)).to_be_visible(timeout=WAIT)
    waterfall = page.locator(
        f"[data-testid='stVegaLiteChart'][aria-label=\"Waterfall of the attributions of {MODEL}'s answer\"]"
    )
    expect(waterfall).to_be_visible(timeout=WAIT)
    attributed = explained.rows[0]
    assert attributed.class_index == label
    expect(page.get_by_text(f"= {attributed.output:.4g}. ")).to_contain_text(
        f"to this row's output: {attributed.base_value:.4g} + "
    )
