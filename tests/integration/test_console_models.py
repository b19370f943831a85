"""The console's Models page against the real stack, in a real Chromium: a model with two served
versions, promoted back to v1 from the page (with a confirmation and a reason) and rolled back to v2,
each move checked in the registry itself; and a write the registry refuses, shown as its answer."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cascade import Client
from cascade.cli.demo import write_batches
from cascade.stack import SERVICES, Stack
from tests.integration.browser import Console

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

# A page's first render on a busy machine (Streamlit loading the client, a refresh under way).
PAGE_MS = 30_000


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[Client]:
    with Client({name: stack.address(name) for name in SERVICES}, security=stack.client_security) as opened:
        yield opened


@pytest.fixture(scope="module")
def model(client: Client, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A model whose v1 and v2 both served, v2 now champion: the demo's two batches (60% and 40% of
    the breast-cancer data), each followed to its served version."""
    name = f"console_models_{uuid.uuid4().hex[:6]}"
    batches = write_batches(Path(tmp_path_factory.mktemp("batches")))
    for batch, expected in ((batches.first, 1), (batches.second, 2)):
        upload = client.upload(batch, name)
        assert client.follow(upload.dataset_version, name, wait_seconds=300).version == expected
    assert client.get_model(name).aliases["champion"] == 2
    return name


def test_promote_v1_back_and_roll_back_from_the_page(
    console: Console, page: object, client: Client, model: str
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    page.goto(console.url(f"models?model={model}"))
    expect(page.get_by_role("heading", name=f"Versions of {model}")).to_be_visible(timeout=PAGE_MS)
    comparison = page.locator("[data-testid='stTable']").filter(has_text="metric holdout_accuracy")
    expect(comparison).to_contain_text("v1", timeout=PAGE_MS)
    expect(comparison).to_contain_text("v2", timeout=PAGE_MS)

    promote = page.locator("[data-testid='stForm']").filter(has_text="Promote a version")
    promote.get_by_label("Version to promote").fill("1")
    promote.get_by_label("Reason for the promotion").fill("v2 misreads a segment; back to v1")
    # No confirmation: the page refuses before asking the registry.
    promote.get_by_role("button", name="Promote", exact=True).click()
    expect(page.get_by_text("Tick the confirmation box first.")).to_be_visible(timeout=PAGE_MS)
    assert client.get_model(model).aliases["champion"] == 2

    # The form starts afresh after each submit, so nothing confirmed once carries over.
    expect(promote.get_by_label("Reason for the promotion")).to_have_value("", timeout=PAGE_MS)
    promote.get_by_label("Version to promote").fill("1")
    promote.get_by_label("Reason for the promotion").fill("v2 misreads a segment; back to v1")
    promote.get_by_text("I confirm the promotion").click()
    promote.get_by_role("button", name="Promote", exact=True).click()
    expect(page.get_by_text(f"{model}@champion → v1")).to_be_visible(timeout=PAGE_MS)
    assert client.get_model(model).aliases["champion"] == 1
    last = client.call(lambda c: c.registry.alias_history(model))[-1]
    assert (last.alias, last.from_version, last.to_version) == ("champion", 2, 1)
    assert last.reason == "v2 misreads a segment; back to v1"
    history = page.locator("[data-testid='stTable']").filter(has_text="REASON")
    expect(history.locator("tr", has_text="v2 misreads a segment")).to_contain_text("v2", timeout=PAGE_MS)

    rollback = page.locator("[data-testid='stForm']").filter(has_text="Roll back the champion")
    rollback.get_by_label("Reason for the rollback").fill("the segment was a labelling error")
    rollback.get_by_text("I confirm the rollback").click()
    rollback.get_by_role("button", name="Roll back", exact=True).click()
    expect(page.get_by_text(f"{model}@champion rolled back → v2")).to_be_visible(timeout=PAGE_MS)
    assert client.get_model(model).aliases["champion"] == 2
    last = client.call(lambda c: c.registry.alias_history(model))[-1]
    assert (last.from_version, last.to_version) == (1, 2)
    assert last.reason == "rollback from v1: the segment was a labelling error"  # the registry's words first
    expect(history.locator("tr", has_text="the segment was a labelling error")).to_contain_text(
        "v1", timeout=PAGE_MS
    )
    expect(page.locator("[data-testid='stException']")).to_have_count(0, timeout=PAGE_MS)


def test_a_refused_write_shows_the_registrys_answer(
    console: Console, page: object, client: Client, model: str
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    page.goto(console.url(f"models?model={model}"))
    form = page.locator("[data-testid='stForm']").filter(has_text="Set or delete an alias")
    form.get_by_label("Alias name").fill("staging")
    form.get_by_label("Version for the alias").fill("99")
    form.get_by_label("Reason for the alias change").fill("try a version that is not there")
    form.get_by_text("I confirm the alias change").click()
    form.get_by_role("button", name="Set alias", exact=True).click()

    expect(page.get_by_text("Setting staging refused")).to_be_visible(timeout=PAGE_MS)
    expect(page.get_by_text("Setting staging refused")).to_contain_text("v99", timeout=PAGE_MS)
    assert "staging" not in client.get_model(model).aliases
