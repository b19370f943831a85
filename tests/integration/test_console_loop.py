"""The console's Loop page against the real stack, in a real Chromium: the services' health, a
cascade followed from its upload to the served model, a cascade that fails validation shown with the
gate that failed it, the events they emitted, and Kafka's lag per service and topic."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from cascade import Client
from cascade.stack import SERVICES, Stack
from tests.integration.browser import Console

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

# A page's first render on a busy machine (Streamlit loading the client, a refresh under way).
PAGE_MS = 30_000

# A cascade takes 20-60 s on a busy machine; both run at once, and the page refreshes every second.
CASCADE_TIMEOUT_MS = 300_000


@dataclass(frozen=True)
class Uploads:
    good: str  # a dataset whose cascade ends serving
    noise: str  # a dataset with random labels: its model fails the validator's min_accuracy gate


@pytest.fixture(scope="module")
def uploads(stack: Stack) -> Iterator[Uploads]:
    """Both batches uploaded up front, so their cascades run while the tests watch."""
    suffix = uuid.uuid4().hex[:6]
    chosen = Uploads(good=f"console_loop_{suffix}", noise=f"console_noise_{suffix}")
    frame = load_breast_cancer(as_frame=True).frame
    # Labels a coin decided: nothing to learn, so accuracy on fresh rows stays near 0.5, under the
    # validator's floor of 0.7.
    noise = frame.assign(target=np.random.default_rng(3).integers(0, 2, len(frame)))
    with Client({name: stack.address(name) for name in SERVICES}, security=stack.client_security) as client:
        assert client.upload(frame, chosen.good).created
        assert client.upload(noise, chosen.noise).created
    yield chosen


def test_the_loop_shows_the_services_and_follows_a_cascade_to_serving(
    stack: Stack, console: Console, page: object, uploads: Uploads
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    page.goto(console.url())  # the Loop page is the main page: / (/loop shows "Page not found")

    services = page.locator("[data-testid='stTable']").first
    expect(services).to_contain_text("ADDRESS", timeout=PAGE_MS)
    for name in SERVICES:
        row = services.locator("tr", has_text=stack.address(name))
        expect(row).to_contain_text(name, timeout=PAGE_MS)
        expect(row).to_contain_text("SERVING", timeout=PAGE_MS)
    cascade = page.locator("tr", has_text=uploads.good)
    # The row appears with the upload and moves through the stages as the page refreshes itself.
    expect(cascade.first).to_be_visible(timeout=PAGE_MS)
    expect(cascade.first).to_contain_text("serving", timeout=CASCADE_TIMEOUT_MS)
    expect(cascade.first).to_contain_text(
        "✓ uploaded → ✓ trained → ✓ validated → ✓ promoted → ✓ serving", timeout=PAGE_MS
    )
    expect(cascade.first).to_contain_text("v1", timeout=PAGE_MS)
    # The events of that cascade, newest first, among the page's live parts.
    events = page.locator("tr", has_text=uploads.good)
    expect(events.filter(has_text="data.arrived")).to_have_count(1, timeout=PAGE_MS)
    expect(events.filter(has_text="model.promoted").first).to_contain_text(
        f"{uploads.good}@champion → v1", timeout=PAGE_MS
    )
    expect(page.locator("[data-testid='stException']")).to_have_count(0, timeout=PAGE_MS)


def test_a_failed_validation_shows_its_stage_and_gate(
    console: Console, page: object, uploads: Uploads
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    page.goto(console.url())

    cascade = page.locator("tr", has_text=uploads.noise).filter(has_text="v1").first
    expect(cascade).to_contain_text("failed at validated", timeout=CASCADE_TIMEOUT_MS)
    expect(cascade).to_contain_text(
        "✓ uploaded → ✓ trained → ✗ validated → · promoted → · serving", timeout=PAGE_MS
    )
    expect(cascade).to_contain_text("min_accuracy failed", timeout=PAGE_MS)
    expect(cascade).to_contain_text("vs threshold 0.7", timeout=PAGE_MS)
    expect(page.locator("tr", has_text="model.validated").filter(has_text=uploads.noise)).to_contain_text(
        "failed min_accuracy", timeout=PAGE_MS
    )


def test_the_loop_shows_lag_per_service_and_topic(console: Console, page: object, uploads: Uploads) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    page.goto(console.url())

    expect(page.get_by_role("heading", name="Delivery", exact=True)).to_be_visible(timeout=PAGE_MS)
    expect(page.get_by_text("lag unknown")).to_have_count(0, timeout=PAGE_MS)
    # The trainer's group reads the data-arrived topic; both uploads went through it.
    trainer = page.locator("tr", has_text="it.data-arrived.v1").filter(has_text="trainer")
    expect(trainer).to_have_count(1, timeout=PAGE_MS)
