"""The Models page's Traffic section against the real stack, in a real Chromium: a model with two
served versions gets v1 as a canary from the page (a confirmation and a reason), and the registry's
split changes; a canary the registry refuses (the champion as its own) shows its answer and moves
nothing; a rollout started through the SDK shows its plan and current step, and is aborted from the
page with a reason, which the registry records as the cause and the monitor's verdict repeats."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cascade import Client
from cascade.cli.demo import write_batches
from cascade.client.records import Traffic
from cascade.stack import SERVICES, Stack
from tests.integration.browser import Console

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PAGE_MS = 30_000


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[Client]:
    with Client({name: stack.address(name) for name in SERVICES}, security=stack.client_security) as opened:
        yield opened


@pytest.fixture(scope="module")
def model(client: Client, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A model whose v1 and v2 both served, v2 now champion (the demo's two batches)."""
    name = f"console_traffic_{uuid.uuid4().hex[:6]}"
    batches = write_batches(Path(tmp_path_factory.mktemp("batches")))
    for batch, expected in ((batches.first, 1), (batches.second, 2)):
        upload = client.upload(batch, name)
        assert client.follow(upload.dataset_version, name, wait_seconds=300).version == expected
    assert client.get_model(name).aliases["champion"] == 2
    return name


def _row(table: Any, role: str) -> Any:
    """The split table's row of `role` (other rows name it too: "beside the champion")."""
    return table.get_by_role("row", name=re.compile(rf"^{role} "))


def _traffic(client: Client, model: str) -> Traffic:
    return client.call(lambda c: c.registry.get_traffic(model))


def test_a_canary_set_from_the_page_changes_the_registrys_split(
    console: Console, page: object, client: Client, model: str
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    before = _traffic(client, model)
    assert (before.champion_version, before.canary_version) == (2, 0)
    page.goto(console.url(f"models?model={model}"))
    split = page.locator("[data-testid='stTable']").filter(has_text="WHAT IT DOES")
    expect(_row(split, "champion")).to_contain_text("100%", timeout=PAGE_MS)

    form = page.locator("[data-testid='stForm']").filter(has_text="Set a canary")
    form.get_by_label("Canary version").fill("1")
    form.get_by_label("Percent of requests").fill("30")
    form.get_by_label("Reason for the canary").fill("v1 on a third of requests")
    form.get_by_text("I confirm the canary").click()
    form.get_by_role("button", name="Set canary", exact=True).click()

    expect(page.get_by_text(f"{model}: champion v2, canary v1 at 30%")).to_be_visible(timeout=PAGE_MS)
    after = _traffic(client, model)
    assert (after.champion_version, after.canary_version, after.canary_percent) == (2, 1, 30.0)
    assert (after.actor, after.reason) == ("console", "v1 on a third of requests")
    assert after.revision > before.revision
    expect(_row(split, "canary")).to_contain_text("30%", timeout=PAGE_MS)
    expect(_row(split, "champion")).to_contain_text("70%", timeout=PAGE_MS)
    moves = client.call(lambda c: c.registry.alias_history(model))
    assert any(m.alias == "canary" and m.to_version == 1 for m in moves)

    # The champion as its own canary: the registry refuses, the page says so, nothing moves.
    expect(form.get_by_label("Reason for the canary")).to_have_value("", timeout=PAGE_MS)
    form.get_by_label("Canary version").fill("2")
    form.get_by_label("Percent of requests").fill("10")
    form.get_by_label("Reason for the canary").fill("the champion against itself")
    form.get_by_text("I confirm the canary").click()
    form.get_by_role("button", name="Set canary", exact=True).click()
    expect(page.get_by_text("Setting v2 as canary at 10% refused")).to_be_visible(timeout=PAGE_MS)
    expect(page.get_by_text("it cannot be its own canary")).to_be_visible(timeout=PAGE_MS)
    unchanged = _traffic(client, model)
    assert (unchanged.canary_version, unchanged.canary_percent, unchanged.revision) == (
        1,
        30.0,
        after.revision,
    )
    expect(page.locator("[data-testid='stException']")).to_have_count(0, timeout=PAGE_MS)


def test_a_running_rollout_shows_its_step_and_is_aborted_from_the_page(
    console: Console, page: object, client: Client, model: str
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    client.call(lambda c: c.registry.set_traffic(model, actor="test", reason="clear the manual split"))
    started = client.call(lambda c: c.registry.start_rollout(model, 1, actor="test", reason="roll v1 out"))
    assert started.rollout is not None and started.rollout.running and started.rollout.step == 0
    steps = len(started.rollout.plan.steps)
    first = started.rollout.plan.steps[0]

    page.goto(console.url(f"models?model={model}"))
    expect(
        page.get_by_text(f"Rolling out v1: step 1 of {steps} ({first.stage} {first.percent:g}%)")
    ).to_be_visible(timeout=PAGE_MS)
    plan = page.locator("[data-testid='stTable']").filter(has_text="MIN REQUESTS")
    expect(plan.locator("tr").nth(1)).to_contain_text("current", timeout=PAGE_MS)
    # The monitor's comparison of the step: no request yet, so it holds.
    expect(page.get_by_text(re.compile(r"^Verdict: holding"))).to_be_visible(timeout=2 * PAGE_MS)
    figures = page.locator("[data-testid='stTable']").filter(has_text="FIGURE")
    expect(figures.get_by_role("row", name=re.compile(r"^stage "))).to_contain_text("shadow, step 1")

    form = page.locator("[data-testid='stForm']").filter(has_text="Abort the rollout")
    reason = "v1 is older than the champion; stopping by hand"
    form.get_by_label("Reason for the abort").fill(reason)
    form.get_by_text("I confirm the abort").click()
    form.get_by_role("button", name="Abort rollout", exact=True).click()

    expect(page.get_by_text(f"{model}: rollout aborted; champion v2")).to_be_visible(timeout=PAGE_MS)
    after = _traffic(client, model)
    assert after.rollout is not None
    assert (after.rollout.version, after.rollout.state) == (1, "rolled_back")
    assert reason in after.rollout.cause
    assert (after.champion_version, after.canary_version, after.shadow_version) == (2, 0, 0)
    expect(page.get_by_text(f"The rollout of v1 was rolled back at step 1: {reason}")).to_be_visible(
        timeout=PAGE_MS
    )
    expect(page.get_by_text(f"Verdict: rolled_back: {reason}")).to_be_visible(timeout=2 * PAGE_MS)
    expect(page.locator("[data-testid='stException']")).to_have_count(0, timeout=PAGE_MS)
