"""The console's data pages in a real Chromium against the real stack: a batch with bad rows is
uploaded through the SDK and followed to its served version, then

    Datasets  shows each rejected row's reason exactly as ingest gave it, and a feature's histogram
    Lineage   draws the served version back to its dataset version and the batch (with its counts)
    Traces    shows the upload's cascade as a waterfall across the services
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pandas as pd
import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from sklearn.datasets import load_breast_cancer

from cascade.client.records import ModelVersion, UploadResult
from cascade.client.sdk import AsyncClient
from cascade.stack import SERVICES, Stack
from tests.integration.browser import Console

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

# Rows (0-based, in the frame) spoiled before the upload, and how.
NOT_A_NUMBER_ROW, NO_TARGET_ROW = 3, 7


@dataclass(frozen=True)
class Uploaded:
    dataset: str
    upload: UploadResult
    version: ModelVersion
    trace_id: str


def _frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The breast-cancer data, clean (for the schema) and with two bad rows: a word in a numeric
    column, and a missing target."""
    clean = load_breast_cancer(as_frame=True).frame
    spoiled = clean.astype(object)
    spoiled.loc[NOT_A_NUMBER_ROW, "mean radius"] = "abc"
    spoiled.loc[NO_TARGET_ROW, "target"] = None
    return clean, spoiled


@pytest.fixture(scope="module")
def uploaded(stack: Stack) -> Uploaded:
    """A declared dataset, one batch with bad rows uploaded under a trace id of the test's own
    (the SDK's channel carries the current trace context), followed to its served version."""
    dataset = f"console_data_{uuid.uuid4().hex[:8]}"
    clean, spoiled = _frames()
    trace_id = secrets.token_hex(16)
    parent = SpanContext(
        trace_id=int(trace_id, 16),
        span_id=int(secrets.token_hex(8), 16),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )

    async def cascade() -> tuple[UploadResult, ModelVersion]:
        addresses = {name: stack.address(name) for name in SERVICES}
        async with AsyncClient(addresses, security=stack.client_security) as client:
            schema = await client.ingest.infer_schema(clean.to_csv(index=False).encode())
            await client.ingest.register_dataset(dataset, schema)
            with trace.use_span(NonRecordingSpan(parent)):
                upload = await client.upload(spoiled, dataset)
            version = await client.follow(upload.dataset_version, dataset, wait_seconds=240)
            return upload, version

    # In a thread of its own: the browser's Playwright already runs an event loop in this one.
    with ThreadPoolExecutor(1) as thread:
        upload, version = thread.submit(asyncio.run, cascade()).result()
    assert upload.created and upload.report.rows_rejected == 2
    return Uploaded(dataset, upload, version, trace_id)


def _reload_until(page: object, url: str, ready: Callable[[], bool], what: str, seconds: float = 60) -> None:
    """Open `url` again until `ready()` (the page reads span files and caches reads for a few
    seconds, and does not refresh on its own)."""
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    deadline = time.monotonic() + seconds
    page.goto(url)
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"the page never showed {what}")
        page.wait_for_timeout(2000)
        page.goto(url)


def test_datasets_page_shows_rejected_rows_with_their_reasons_and_a_histogram(
    console: Console, page: object, uploaded: Uploaded
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    reasons = {row.reason for row in uploaded.upload.report.rejected}
    assert len(reasons) == 2  # the word and the missing target, each with its own reason

    page.goto(console.url(f"datasets?dataset={uploaded.dataset}"))

    expect(page.get_by_role("heading", name="Datasets", exact=True)).to_be_visible()
    expect(page.get_by_role("heading", name=f"Versions of {uploaded.dataset}")).to_be_visible()
    rejected = page.get_by_test_id("stTable")
    for reason in reasons:
        expect(rejected.get_by_role("cell", name=reason, exact=True)).to_be_visible()
    # The row as received: the word that is not a number is there.
    expect(rejected.get_by_role("cell", name="mean radius='abc'")).to_be_visible()
    histograms = page.locator("[data-testid='stVegaLiteChart'][aria-label^='Histograms of mean radius']")
    expect(histograms).to_contain_text("mean radius (missing 0.0%, mean ")  # a facet's title
    expect(histograms.locator(".mark-rect path").first).to_be_attached()  # the bars
    expect(page.get_by_test_id("stException")).to_have_count(0)


def test_lineage_page_draws_the_served_version_back_to_its_batch(
    console: Console, page: object, uploaded: Uploaded
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    version, upload = uploaded.version, uploaded.upload
    assert "champion" in version.aliases  # so the page's default is this version

    page.goto(console.url(f"lineage?model={uploaded.dataset}"))

    expect(page.get_by_role("heading", name="Lineage", exact=True)).to_be_visible()
    graph = page.locator("[data-testid='stGraphVizChart'] svg")
    expect(graph).to_contain_text(f"{uploaded.dataset} v{version.version} @champion")
    expect(graph).to_contain_text(f"dataset version {upload.dataset_version[:12]}")
    expect(graph).to_contain_text(f"batch {upload.batch_id[:12]}")
    report = upload.report
    expect(graph).to_contain_text(f"{report.rows_accepted} accepted, {report.rows_rejected} rejected")
    expect(graph).to_contain_text(f"training run {version.run.run_id[:8]}")
    # The same facts, whole, in the table under the graph.
    facts = page.get_by_test_id("stTable")
    expect(facts.get_by_role("cell", name=upload.dataset_version, exact=True)).to_be_visible()
    expect(facts.get_by_role("cell", name=upload.batch_id, exact=True)).to_be_visible()
    expect(facts.get_by_role("cell", name=version.run.run_id, exact=True)).to_be_visible()
    expect(page.get_by_test_id("stException")).to_have_count(0)


def test_traces_page_shows_the_uploads_cascade_across_services(
    console: Console, page: object, uploaded: Uploaded
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    waterfall = page.get_by_test_id("stCode")
    expected = ("cascade-ingest", "cascade-trainer", "cascade-validator", "cascade-registry")

    def all_services_shown() -> bool:
        page.get_by_role("heading", name="Traces", exact=True).wait_for()
        page.get_by_test_id("stCode").or_(page.get_by_test_id("stAlert")).first.wait_for()
        text = waterfall.text_content() if waterfall.count() else ""
        return all(service in (text or "") for service in expected)

    _reload_until(
        page, console.url(f"traces?trace={uploaded.trace_id[:12]}"), all_services_shown, "the cascade's spans"
    )

    expect(page.get_by_role("heading", name=f"Waterfall of {uploaded.trace_id}")).to_be_visible()
    expect(waterfall).to_contain_text(f"trace {uploaded.trace_id}:")
    expect(waterfall).to_contain_text("/cascade.ingest.v1.IngestService/UploadBatch (server)")
    chart = page.locator(
        f"[data-testid='stVegaLiteChart'][aria-label='Waterfall of trace {uploaded.trace_id}']"
    )
    expect(chart).to_be_visible()
    expect(chart).to_contain_text("UploadBatch")  # a bar's label on the chart's axis
    expect(page.get_by_test_id("stException")).to_have_count(0)
