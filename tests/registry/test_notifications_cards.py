"""The card builders, pure: every notice makes a Slack message and a Teams card of the shapes the
platforms accept, however long its texts or many its facts; and the shape checks the test receiver
applies refuse what the platforms would."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from cascade.services.registry.chat_cards import Link, Notice, slack_message, teams_message
from tests.registry.chat_receiver import ShapeError, validate_slack, validate_teams

PLAIN = Notice(
    kind="drift",
    title="Drift detected on fraud",
    summary="3 of 4 features drifted",
    facts=(("Champion", "v2"),),
    links=(Link("Drift", "http://c/drift?model=fraud"),),
    context=("model fraud",),
)

HUGE = Notice(
    kind="validation_failed",
    title="T" * 400,
    summary="<@channel> & " + "s" * 6000,
    severity="attention",
    facts=tuple((f"gate {i} <&>", "v" * 2500) for i in range(45)),
    links=tuple(Link("L" * 100, f"http://c/models?model=m&version={i}") for i in range(9)),
    context=tuple("c" * 2500 for _ in range(14)),
)


@pytest.mark.parametrize(
    "notice", [PLAIN, HUGE, Notice(kind="x", title="t", summary="s")], ids=["plain", "huge", "bare"]
)
def test_every_notice_makes_valid_slack_and_teams_messages(notice: Notice) -> None:
    slack = slack_message(notice)
    teams = teams_message(notice)

    validate_slack(slack)
    validate_teams(teams)
    assert len(slack["blocks"]) <= 50


def test_slack_text_is_escaped_and_cut_within_the_limits() -> None:
    slack = slack_message(HUGE)

    header, summary = slack["blocks"][0], slack["blocks"][1]
    assert len(header["text"]["text"]) == 150 and header["text"]["text"].endswith("…")
    assert summary["text"]["text"].startswith(":rotating_light: &lt;@channel&gt; &amp; ")  # no mention pings
    assert len(summary["text"]["text"]) <= 3000
    fields = [f for b in slack["blocks"] if b["type"] == "section" for f in b.get("fields", [])]
    assert len(fields) == 30  # the rest is on the console page
    assert fields[0]["text"].startswith("*gate 0 &lt;&amp;&gt;*\n")


def test_a_teams_card_has_its_facts_and_open_url_actions() -> None:
    card = teams_message(PLAIN)["attachments"][0]["content"]

    assert card["version"] == "1.4"
    assert card["body"][0] == {
        "type": "TextBlock",
        "text": "Drift detected on fraud",
        "weight": "Bolder",
        "size": "Medium",
        "color": "Warning",
        "wrap": True,
    }
    assert card["body"][2] == {"type": "FactSet", "facts": [{"title": "Champion", "value": "v2"}]}
    assert card["actions"] == [
        {"type": "Action.OpenUrl", "title": "Drift", "url": "http://c/drift?model=fraud"}
    ]


def _broken(message: dict[str, Any], path: list[str | int], value: Any) -> dict[str, Any]:
    broken = copy.deepcopy(message)
    node: Any = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return broken


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        (["blocks", 0, "type"], "image", "block type 'image'"),
        (["blocks", 0, "text", "text"], "h" * 151, "1..150"),
        (["blocks", 0, "text", "type"], "mrkdwn", "not in ['plain_text']"),
        (["blocks", 2, "fields"], [{"type": "mrkdwn", "text": "x"}] * 11, "1..10 fields"),
        (["blocks", 3, "elements", 0, "url"], "javascript:alert(1)", "http(s) url"),
        (["blocks"], [], "1..50"),
        (["text"], "", "fallback text"),
    ],
)
def test_the_slack_shape_check_refuses_what_slack_would(
    path: list[str | int], value: Any, problem: str
) -> None:
    with pytest.raises(
        ShapeError,
        match=re.escape(problem),
    ):
        validate_slack(_broken(slack_message(PLAIN), path, value))


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        (["type"], "card", "type must be 'message'"),
        (["attachments", 0, "contentType"], "application/json", "contentType"),
        (["attachments", 0, "content", "version"], "1.6", "version must be 1.4 or 1.5"),
        (["attachments", 0, "content", "$schema"], "x", "schema"),
        (["attachments", 0, "content", "body", 0, "type"], "Image", "element type 'Image'"),
        (["attachments", 0, "content", "actions", 0, "type"], "Action.Submit", "only Action.OpenUrl"),
        (["attachments", 0, "content", "body"], [], "a body is required"),
    ],
)
def test_the_teams_shape_check_refuses_what_teams_would(
    path: list[str | int], value: Any, problem: str
) -> None:
    with pytest.raises(ShapeError, match=re.escape(problem)):
        validate_teams(_broken(teams_message(PLAIN), path, value))
