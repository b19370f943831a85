"""The console's Drift page in a real Chromium against the real stack: a model uploaded and followed
to its served champion through the SDK, predictions with two features shifted sent through serving,
the monitor's report of drift awaited, and then the page draws each feature's statistic over time
and its distributions, marks the shifted features as drifted, names a shifted feature as the one
whose share of the champion's attribution moved most (drift explained), and lists the drift events
with what they triggered. The model is not a *_loop one, so the stack retrains nothing on its drift: its
decision is recorded as held back."""

from __future__ import annotations

import pandas as pd
import pytest
from sklearn.datasets import load_diabetes

from cascade import Client
from cascade.client.monitor import DriftHistory
from cascade.client.records import DriftReport
from cascade.errors import NotFound
from cascade.stack import SERVICES, Stack
from tests.integration.browser import Console
from tests.integration.support import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

MODEL = "console_drift"
SHIFTED = ("bmi", "s5")
TIMEOUT = 240.0
EVERY = 20  # the stack's monitor reports every 20 rows, over a window of 40
PAGE_TIMEOUT_MS = 30_000
CHARTS_TIMEOUT_MS = 60_000


def _drifted(client: Client, features: pd.DataFrame) -> tuple[DriftReport, DriftHistory]:
    """Send shifted rows, a report's worth at a time, until the monitor's latest report finds both
    shifted features drifted and its rule has fired (two drifted reports in a row): the report,
    and the history with that decision."""
    shifted = features.copy()
    for name in SHIFTED:
        shifted[name] += 3 * features[name].std()
    batches = iter(range(10**6))

    def fired() -> tuple[DriftReport, DriftHistory] | None:
        client.predict(MODEL, shifted.sample(EVERY, random_state=next(batches)))
        try:
            report = client.drift_report(MODEL)
        except NotFound:
            return None
        if not (report.dataset_drifted and set(SHIFTED) <= set(report.drifted_features)):
            return None
        history = client.call(lambda c: c.monitor.drift_history(MODEL))
        return (report, history) if history.drift_events else None

    return wait_for(fired, TIMEOUT, f"the monitor to find {', '.join(SHIFTED)} drifting", interval=0.5)


def test_the_drift_page_draws_the_shifted_features_as_drifted(
    stack: Stack, console: Console, page: object
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    frame = load_diabetes(as_frame=True, scaled=False).frame
    features = frame.drop(columns="target")
    with Client({name: stack.address(name) for name in SERVICES}, security=stack.client_security) as client:
        upload = client.upload(frame, MODEL)
        champion = client.follow(upload.dataset_version, MODEL, wait_seconds=TIMEOUT)
        # Served, but no predictions yet: the page says there is no report, without an error.
        page.goto(console.url(f"drift?model={MODEL}"))
        note = page.get_by_text(f"The monitor has no drift report for {MODEL} yet")
        expect(note).to_be_visible(timeout=PAGE_TIMEOUT_MS)
        expect(
            page.locator("[data-testid='stException'], [data-testid='stAlertContentError']")
        ).to_have_count(0)
        # Unshifted traffic first, so the history starts calm.
        for seed in range(3):
            client.predict(MODEL, features.sample(EVERY, random_state=seed))
        report, history = _drifted(client, features)
    assert report.model_version == champion.version
    bmi = next(f for f in report.features if f.feature == "bmi")
    assert bmi.drifted and sum(bmi.window_frequencies) == pytest.approx(1.0)
    assert len(bmi.bin_edges) == len(bmi.reference_frequencies) + 1
    assert any(f.feature == "bmi" and f.drifted for f in history.verdicts[0].features)
    # Drift explained: the champion now leans on a shifted feature more (or less) than on its reference.
    assert report.attribution_shift, report.attribution_note
    assert report.attribution_shift[0].feature in SHIFTED, report.attribution_shift
    # against the background the trainer tagged the champion with, through the registry
    assert "rows of the version's explain_background" in report.attribution_note, report.attribution_note
    [decision] = history.drift_events  # held back: the stack retrains only *_loop models
    assert not decision.emitted and decision.triggered.startswith(f"none: {MODEL} is not retrained")

    page.goto(console.url(f"drift?model={MODEL}"))
    expect(page.get_by_role("heading", name="Drift", exact=True)).to_be_visible()
    expect(page.get_by_text("Dataset drifted")).to_be_visible(timeout=PAGE_TIMEOUT_MS)  # after its reads
    # The shifted features are marked drifted, and drawn; the calm ones are drawn on demand.
    for name in SHIFTED:
        expect(page.get_by_text(f"{name}: DRIFTED (ks_calibrated)")).to_be_visible()
    expect(page.get_by_text("age: no drift")).to_have_count(0)
    # Each drifted feature's panel is open and draws its two charts (Vega's svg, or its canvas);
    # Vega draws them a while after the page's text is in.
    for title in ("Statistic over time: bmi", "Distribution: bmi", "Statistic over time: prediction"):
        chart = page.locator(f"[role='graphics-document'][aria-label='{title}']")
        expect(chart.locator("svg, canvas").first).to_be_visible(timeout=CHARTS_TIMEOUT_MS)
    expect(page.get_by_role("heading", name="Drift explained")).to_be_visible()
    expect(page.get_by_text(f"{report.attribution_shift[0].feature} moved most")).to_be_visible()
    share = page.locator("[role='graphics-document'][aria-label='Attribution share: reference and window']")
    expect(share.locator("svg, canvas").first).to_be_visible(timeout=CHARTS_TIMEOUT_MS)
    expect(
        page.get_by_text("Estimated accuracy (ESTIMATE)").or_(page.get_by_text("No performance yet"))
    ).to_be_visible()
    # The decision the drift led to, and what it triggered: nothing, this model is not retrained.
    expect(page.get_by_role("heading", name="Drift events")).to_be_visible()
    events = page.locator("[data-testid='stTable']").filter(has_text="triggered")
    expect(events).to_contain_text(f"none: {MODEL} is not retrained automatically")
    expect(events).to_contain_text("held back")
    # A calm feature, chosen (typed into the box, as a person filters it), is drawn and marked so.
    box = page.get_by_role("combobox", name="Draw a feature that did not drift")
    box.click()
    box.press_sequentially("age")
    box.press("Enter")
    expect(page.get_by_text("age: no drift (ks_calibrated)")).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    age = page.locator("[role='graphics-document'][aria-label='Distribution: age']")
    expect(age.locator("svg, canvas").first).to_be_visible(timeout=CHARTS_TIMEOUT_MS)
    expect(page.locator("[data-testid='stException']")).to_have_count(0)
