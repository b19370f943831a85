"""The console's Models page against the real stack, in a real Chromium: a model with two served
versions, promoted back to v1 from the page (with a confirmation and a reason) and rolled back to v2,
each move checked in the registry itself; a write the registry refuses, shown as its answer; and a
model on the manual policy whose passing candidate awaits approval and is approved from the page,
audited with who and why, and announced in Slack and Teams (the `chat` fixture, chat.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cascade import Client
from cascade.cli.demo import write_batches
from cascade.client.records import Approval
from cascade.events import Event, ModelApprovalDecided, ModelApprovalRequested
from cascade.stack import SERVICES, Stack
from tests.integration.browser import Console
from tests.integration.chat import console_answers, message_links, titled
from tests.integration.support import wait_for
from tests.integration.test_registry import _read_topic
from tests.registry.chat_receiver import ChatReceiver

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


@dataclass(frozen=True)
class AwaitingApproval:
    model: str
    version: int
    dataset_version: str


def _awaiting_approval(client: Client, directory: Path) -> AwaitingApproval:
    """A new model on the manual policy whose first version passed validation: challenger, awaiting
    approval, and nothing serving it yet."""
    name = f"console_approval_{uuid.uuid4().hex[:6]}"
    client.call(lambda c: c.registry.register_model(name, promotion_policy="manual"))
    batches = write_batches(directory)
    upload = client.upload(batches.first, name)
    judged = client.follow(upload.dataset_version, name, wait_seconds=300, served=False)
    assert (judged.version, judged.aliases) == (1, ("challenger",))
    [pending] = client.approvals(name)
    assert (pending.version, pending.status, pending.requested_by) == (1, "pending", "validator")
    assert "champion" not in client.get_model(name).aliases
    return AwaitingApproval(name, judged.version, upload.dataset_version)


@pytest.fixture(scope="module")
def awaiting_approval(client: Client, tmp_path_factory: pytest.TempPathFactory) -> AwaitingApproval:
    return _awaiting_approval(client, Path(tmp_path_factory.mktemp("approval_batches")))


def _announced(stack: Stack, event_type: type[Event], model: str, seconds: float = 30) -> list[Any]:
    """The events of `event_type` about `model` on Kafka, once there are any (the registry publishes
    them from its outbox right after the change commits; a relay retries what Kafka missed)."""
    deadline = time.monotonic() + seconds
    while True:
        # In a thread of its own: Playwright's sync API keeps an event loop running in this one.
        with ThreadPoolExecutor(1) as reader:
            read = reader.submit(_read_topic, stack, event_type, model).result()
        found = [event for event in read if event.model == model]
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.5)


def test_a_candidate_awaiting_approval_is_approved_from_the_page_and_served(
    console: Console,
    page: object,
    client: Client,
    stack: Stack,
    awaiting_approval: AwaitingApproval,
    chat: ChatReceiver,
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    model, number = awaiting_approval.model, awaiting_approval.version
    page.goto(console.url(f"models?model={model}"))
    expect(page.get_by_text(f"v{number} is awaiting approval")).to_be_visible(timeout=PAGE_MS)
    form = page.locator("[data-testid='stForm']").filter(has_text=f"Approve or reject v{number}")
    reason = "holdout accuracy holds; reviewed the gates"

    form.get_by_label("Reason for the decision").fill(reason)
    form.get_by_role("button", name=f"Approve v{number}", exact=True).click()  # not confirmed yet
    expect(page.get_by_text("Tick the confirmation box first.")).to_be_visible(timeout=PAGE_MS)
    assert client.approvals(model)[0].status == "pending"

    expect(form.get_by_label("Reason for the decision")).to_have_value("", timeout=PAGE_MS)
    form.get_by_label("Reason for the decision").fill(reason)
    form.get_by_text("I confirm the decision").click()
    form.get_by_role("button", name=f"Approve v{number}", exact=True).click()

    # The registry's answer, as it gave it (the stack does not authenticate: the console names itself).
    expect(page.get_by_text(f"{model} v{number} approved by console: now champion")).to_be_visible(
        timeout=PAGE_MS
    )
    decided: Approval = client.approvals(model)[0]
    assert (decided.status, decided.decided_by, decided.reason) == ("approved", "console", reason)
    last = client.call(lambda c: c.registry.alias_history(model))[-1]
    assert (last.alias, last.from_version, last.to_version, last.actor) == ("champion", 0, number, "console")
    assert last.reason == f"approved v{number}: {reason}"
    history = page.locator("[data-testid='stTable']").filter(has_text="ACTOR")
    expect(history.locator("tr", has_text=reason)).to_contain_text("console", timeout=PAGE_MS)
    expect(page.get_by_text("No version is awaiting approval.")).to_be_visible(timeout=PAGE_MS)
    # Promoted exactly as `cascade models promote` would: serving swaps to it.
    served = client.follow(awaiting_approval.dataset_version, model, wait_seconds=120)
    assert served.version == number and "champion" in served.aliases
    # Both ends of the approval went out as events, for notifications to announce.
    [requested] = _announced(stack, ModelApprovalRequested, model)
    assert (requested.model_version, requested.requested_by) == (number, "validator")
    [decided] = _announced(stack, ModelApprovalDecided, model)
    assert (decided.model_version, decided.decision, decided.decided_by, decided.reason) == (
        number,
        "approved",
        "console",
        reason,
    )
    # And the team heard of it, in Slack and in Teams, with the decider and the reason.
    slack, card = wait_for(lambda: titled(chat, f"{model} v{number} approved"), 120, "the decision's message")
    facts = {
        fact["title"]: fact["value"]
        for block in card["body"]
        if block["type"] == "FactSet"
        for fact in block["facts"]
    }
    assert (facts["Decision"], facts["By"], facts["Reason"]) == ("approved", "console", reason)
    assert all(console_answers(link) == 200 for link in message_links(slack, card))
    assert chat.rejected == []
    expect(page.locator("[data-testid='stException']")).to_have_count(0, timeout=PAGE_MS)


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


def test_a_decision_the_registry_refuses_shows_its_answer_and_changes_nothing(
    console: Console, page: object, client: Client, tmp_path: Path
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    awaiting = _awaiting_approval(client, tmp_path)
    model, number = awaiting.model, awaiting.version
    page.goto(console.url(f"models?model={model}"))
    form = page.locator("[data-testid='stForm']").filter(has_text=f"Approve or reject v{number}")
    expect(form).to_be_visible(timeout=PAGE_MS)
    # Someone else rejects it while the page still offers it.
    client.reject(model, number, reason="worse on the new segment")

    form.get_by_label("Reason for the decision").fill("looks good to me")
    form.get_by_text("I confirm the decision").click()
    form.get_by_role("button", name=f"Approve v{number}", exact=True).click()

    refusal = page.get_by_text(f"Approving v{number} refused")
    expect(refusal).to_be_visible(timeout=PAGE_MS)
    expect(refusal).to_contain_text("not awaiting approval: rejected by", timeout=PAGE_MS)
    assert "champion" not in client.get_model(model).aliases
    assert client.approvals(model)[0].reason == "worse on the new segment"
