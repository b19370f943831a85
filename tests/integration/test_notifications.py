"""Chat notifications from the real stack: a version that fails validation, and drift on served
traffic (and the promotion before it), each reach a local Slack and a local Teams webhook
(tests/registry/chat_receiver.py, which answers 400 to any payload of the wrong shape) with links
that the running console answers.

The stack's registry reads its destinations from <home>/notifications.json (conftest.py), which it
re-reads when it changes: the `chat` fixture (chat.py) writes it, pointing at its own receiver, and
removes it after.
The console's URL reaches the registry as `Stack.start_console` gives it: in the launcher's
console.url file. A version fails validation cheaply on 30 rows (test_cli_follow.py); drift comes
from features moved by a standard deviation on a *_loop model (test_monitor_loop.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
from sklearn.datasets import load_breast_cancer, load_diabetes
from typer.testing import CliRunner

from cascade.cli.main import app
from cascade.stack import Stack
from tests.integration.browser import Console
from tests.integration.chat import console_answers, message_links, titled
from tests.integration.support import model_ready, triton_client, upload, wait_for
from tests.registry.chat_receiver import ChatReceiver

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TIMEOUT = 240.0


def _slack_fields(message: dict[str, Any]) -> list[str]:
    return [
        f["text"]
        for block in message["blocks"]
        if block["type"] == "section"
        for f in block.get("fields", [])
    ]


def test_a_failed_validation_reaches_slack_and_teams_with_links_the_console_opens(
    stack: Stack, chat: ChatReceiver, console: Console
) -> None:
    frame = load_breast_cancer(as_frame=True).frame.sample(frac=1.0, random_state=7).reset_index(drop=True)

    upload(stack, "notify_bad", frame.iloc[:30])

    slack, card = wait_for(lambda: titled(chat, "notify_bad v1 failed validation"), TIMEOUT, "both messages")
    assert chat.rejected == []
    assert any(
        text.startswith("*✗ enough_fresh_rows*\n") and "against threshold 10" in text
        for text in _slack_fields(slack)
    )
    facts = {
        f["title"]: f["value"] for block in card["body"] if block["type"] == "FactSet" for f in block["facts"]
    }
    assert "against threshold 10" in facts["✗ enough_fresh_rows"]
    links = message_links(slack, card)
    assert links[0] == console.url("models?model=notify_bad&version=1")
    # The Kafka consumer continued the cascade's trace: the message links to it too.
    assert any(link.startswith(console.url("traces?trace=")) for link in links[1:])
    assert all(console_answers(link) == 200 for link in links)


def test_drift_reaches_slack_and_teams_with_what_the_loop_did_and_links_the_console_opens(
    stack: Stack, chat: ChatReceiver, console: Console
) -> None:
    model = "notify_loop"
    frame = load_diabetes(as_frame=True, scaled=False).frame
    features = [c for c in frame.columns if c != "target"]
    rows = frame[features].to_numpy(np.float64)
    upload(stack, model, frame)
    wait_for(lambda: model_ready(stack, model, "1"), TIMEOUT, "serving to load v1")
    # Six of ten features moved by one standard deviation, served 20 rows at a time until the
    # monitor's two drifted reports in a row make its event.
    shifted = rows[np.random.default_rng(5).permutation(len(rows))]
    shifted[:, :6] += rows[:, :6].std(axis=0)
    client, headers = triton_client(stack)
    served = iter(range(10**6))

    def serve_and_look() -> tuple[dict[str, Any], dict[str, Any]] | None:
        start = next(served) * 20 % (len(shifted) - 20)
        batch = triton.InferInput("input", [20, len(features)], "FP32")
        batch.set_data_from_numpy(shifted[start : start + 20].astype(np.float32))
        client.infer(model, [batch], headers=headers)
        return titled(chat, f"Drift detected on {model}")

    try:
        slack, card = wait_for(serve_and_look, TIMEOUT, "the drift messages", interval=0.5)
    finally:
        client.close()

    # v1 became champion before any of that: its promotion was told too, in the same channel.
    promoted_slack, promoted_card = wait_for(
        lambda: titled(chat, f"{model} v1 is champion"), TIMEOUT, "promotion"
    )
    assert "*Previous champion*\nnone" in _slack_fields(promoted_slack)
    assert message_links(promoted_slack, promoted_card)[0] == console.url(f"models?model={model}&version=1")
    slack_titles = [m["blocks"][0]["text"]["text"] for m in chat.on("/slack/T0/B0/secret")]
    assert slack_titles.index(f"{model} v1 is champion") < slack_titles.index(f"Drift detected on {model}")

    assert chat.rejected == []
    facts = {
        f["title"]: f["value"] for block in card["body"] if block["type"] == "FactSet" for f in block["facts"]
    }
    assert facts["Champion"] == "v1"
    assert len(set(features[:6]) & set(facts)) >= 3, facts  # the top drifted features, by name
    assert facts["What the loop did"].startswith(
        ("Nothing retrained", "Retraining", "Labelled production rows")
    )
    assert "*What the loop did*\n" + facts["What the loop did"] in _slack_fields(slack)
    links = message_links(slack, card)
    assert links[:2] == [console.url(f"drift?model={model}"), console.url(f"models?model={model}&version=1")]
    assert all(console_answers(link) == 200 for link in links)


def test_a_challenger_awaiting_approval_and_its_approval_reach_the_team(
    stack: Stack, chat: ChatReceiver, console: Console
) -> None:
    model = "notify_manual"
    runner = CliRunner()
    registered = runner.invoke(
        app, ["--home", str(stack.home), "models", "register", model, "--policy", "manual"]
    )
    assert registered.exit_code == 0, registered.output
    frame = load_breast_cancer(as_frame=True).frame.sample(frac=1.0, random_state=3).reset_index(drop=True)

    upload(stack, model, frame.iloc[:300])

    slack, card = wait_for(
        lambda: titled(chat, f"{model} v1 awaits approval"), TIMEOUT, "the approval request"
    )
    facts = {
        f["title"]: f["value"] for block in card["body"] if block["type"] == "FactSet" for f in block["facts"]
    }
    assert (facts["Challenger"], facts["Champion"], facts["Requested by"]) == ("v1", "none", "validator")
    assert message_links(slack, card)[0] == console.url(f"models?model={model}&version=1")

    approved = runner.invoke(
        app,
        [
            "--home",
            str(stack.home),
            "models",
            "approve",
            model,
            "1",
            "--reason",
            "read the gates",
            "--actor",
            "ana",
        ],
    )
    assert approved.exit_code == 0, approved.output

    slack, card = wait_for(lambda: titled(chat, f"{model} v1 approved"), TIMEOUT, "the decision")
    facts = {
        f["title"]: f["value"] for block in card["body"] if block["type"] == "FactSet" for f in block["facts"]
    }
    assert (facts["Decision"], facts["Reason"], facts["Champion"]) == ("approved", "read the gates", "v1")
    assert facts["By"]  # the principal the registry recorded
    assert wait_for(lambda: titled(chat, f"{model} v1 is champion"), TIMEOUT, "the promotion")
    assert chat.rejected == []
    assert all(console_answers(link) == 200 for link in message_links(slack, card))
