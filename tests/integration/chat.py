"""The `chat` fixture: a local Slack and a local Teams webhook (tests/registry/chat_receiver.py, which
answers 400 to any payload of the wrong shape) that the integration stack's registry notifies, for
the models named by MODELS, of every event kind a team would want to hear about."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from cascade.stack import Stack
from tests.integration.browser import Console
from tests.registry.chat_receiver import ChatReceiver, running_receiver

# test_notifications.py's models, the console's approval (test_console_models.py) and the rollback
# of test_progressive_delivery.py.
MODELS = ["notify_*", "console_approval_*", "progressive_*"]


@pytest.fixture
def chat(stack: Stack, console: Console) -> Iterator[ChatReceiver]:
    destinations = stack.home / "notifications.json"
    with running_receiver() as receiver:
        stack.console_url_file().write_text(console.url(""))  # what Stack.start_console writes
        destinations.write_text(
            json.dumps(
                [
                    {
                        "name": "ml-slack",
                        "kind": "slack",
                        "url": receiver.url("slack", "T0/B0/secret"),
                        "models": MODELS,
                        "events": [
                            "validation_failed",
                            "drift",
                            "promoted",
                            "approval_requested",
                            "approval_decided",
                            "rolled_back",
                        ],
                    },
                    {
                        "name": "ml-teams",
                        "kind": "teams",
                        "url": receiver.url("teams", "workflow"),
                        "models": MODELS,
                        "events": [
                            "validation_failed",
                            "drift",
                            "promoted",
                            "approval_requested",
                            "approval_decided",
                            "rolled_back",
                        ],
                    },
                ]
            )
        )
        try:
            yield receiver
        finally:
            destinations.unlink(missing_ok=True)
            stack.console_url_file().unlink(missing_ok=True)


def titled(receiver: ChatReceiver, title: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The Slack message and the Teams card titled `title`, once both arrived."""
    slack = [m for m in receiver.on("/slack/T0/B0/secret") if m["blocks"][0]["text"]["text"] == title]
    teams = [
        m["attachments"][0]["content"]
        for m in receiver.on("/teams/workflow")
        if m["attachments"][0]["content"]["body"][0]["text"] == title
    ]
    return (slack[0], teams[0]) if slack and teams else None


def message_links(slack: dict[str, Any], card: dict[str, Any]) -> list[str]:
    buttons = [e["url"] for block in slack["blocks"] if block["type"] == "actions" for e in block["elements"]]
    actions = [action["url"] for action in card.get("actions", [])]
    assert buttons == actions  # one set of links, whichever chat
    return buttons


def console_answers(url: str) -> int:
    with urllib.request.urlopen(url, timeout=30) as response:
        return int(response.status)
