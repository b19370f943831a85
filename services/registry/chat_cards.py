"""Chat messages for one notice: a Slack Block Kit message and a Microsoft Teams Adaptive Card.

Pure functions of a `Notice` (what happened, as a title, a summary, facts and links), so they are
tested without a network. Both builders keep within the platforms' documented limits, cutting text
rather than letting the platform refuse the message:

- Slack (api.slack.com/reference/block-kit): at most 50 blocks; a header's plain_text at most 150
  characters; a section's text 3000 and at most 10 fields of 2000 each; a button's text 75 and its
  url 3000; at most 25 elements in an actions block; at most 10 elements in a context block.
- Teams incoming webhooks and workflows: `{"type": "message", "attachments": [one card]}` whose
  content is an AdaptiveCard of schema version 1.4 (what Teams renders), with TextBlock, FactSet
  and Action.OpenUrl only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ADAPTIVE_CARD_CONTENT_TYPE",
    "ADAPTIVE_CARD_SCHEMA",
    "ADAPTIVE_CARD_VERSION",
    "Link",
    "Notice",
    "Severity",
    "slack_message",
    "teams_message",
]

ADAPTIVE_CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
ADAPTIVE_CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
ADAPTIVE_CARD_VERSION = "1.4"

SLACK_MAX_BLOCKS = 50
SLACK_HEADER_CHARS = 150
SLACK_SECTION_CHARS = 3000
SLACK_FIELD_CHARS = 2000
SLACK_FIELDS_PER_SECTION = 10
SLACK_BUTTON_CHARS = 75
SLACK_URL_CHARS = 3000
SLACK_ACTIONS = 25
SLACK_CONTEXT_ELEMENTS = 10
# Beyond this many facts a message is a report, not a notice: the console page has the rest.
MAX_FACTS = 30
MAX_LINKS = 5

Severity = Literal["good", "warning", "attention"]
_SLACK_MARK = {"good": ":white_check_mark:", "warning": ":warning:", "attention": ":rotating_light:"}


@dataclass(frozen=True)
class Link:
    label: str
    url: str


@dataclass(frozen=True)
class Notice:
    """What a message says, independent of the chat it goes to."""

    kind: str  # the event kind destinations subscribe to, e.g. "validation_failed"
    title: str
    summary: str
    severity: Severity = "warning"
    facts: tuple[tuple[str, str], ...] = ()
    links: tuple[Link, ...] = ()
    context: tuple[str, ...] = field(default=())  # small print: model, event id, time


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _slack_escape(text: str) -> str:
    """mrkdwn treats &, < and > as control characters (links, mentions)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _mrkdwn(text: str, limit: int) -> dict[str, str]:
    # Cut before escaping could split an entity; cut after, with room for what escaping adds.
    escaped = _slack_escape(text)
    while len(escaped) > limit:
        text = text[: max(0, len(text) - (len(escaped) - limit) - 1)]
        escaped = _slack_escape(text + "…")
    return {"type": "mrkdwn", "text": escaped}


def slack_message(notice: Notice) -> dict[str, Any]:
    """A Block Kit message: header, summary, facts as fields, links as buttons, small print."""
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _cut(notice.title, SLACK_HEADER_CHARS), "emoji": True},
        },
        {
            "type": "section",
            "text": _mrkdwn(f"{_SLACK_MARK[notice.severity]} {notice.summary}", SLACK_SECTION_CHARS),
        },
    ]
    facts = notice.facts[:MAX_FACTS]
    for start in range(0, len(facts), SLACK_FIELDS_PER_SECTION):
        chunk = facts[start : start + SLACK_FIELDS_PER_SECTION]
        blocks.append(
            {
                "type": "section",
                "fields": [_mrkdwn(f"*{label}*\n{value}", SLACK_FIELD_CHARS) for label, value in chunk],
            }
        )
    buttons = [
        {
            "type": "button",
            "text": {"type": "plain_text", "text": _cut(link.label, SLACK_BUTTON_CHARS)},
            "url": link.url,
        }
        for link in notice.links[: min(MAX_LINKS, SLACK_ACTIONS)]
        if len(link.url) <= SLACK_URL_CHARS
    ]
    if buttons:
        blocks.append({"type": "actions", "elements": buttons})
    if notice.context:
        blocks.append({"type": "divider"})
        blocks.append(
            {
                "type": "context",
                "elements": [
                    _mrkdwn(item, SLACK_FIELD_CHARS) for item in notice.context[:SLACK_CONTEXT_ELEMENTS]
                ],
            }
        )
    return {
        # The fallback shown in notifications and by clients that do not draw blocks.
        "text": _slack_escape(_cut(f"{notice.title}: {notice.summary}", SLACK_SECTION_CHARS)),
        "blocks": blocks[:SLACK_MAX_BLOCKS],
    }


_TEAMS_COLOR = {"good": "Good", "warning": "Warning", "attention": "Attention"}


def teams_message(notice: Notice) -> dict[str, Any]:
    """A Teams message carrying one Adaptive Card: title, summary, a FactSet and OpenUrl actions."""
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": notice.title,
            "weight": "Bolder",
            "size": "Medium",
            "color": _TEAMS_COLOR[notice.severity],
            "wrap": True,
        },
        {"type": "TextBlock", "text": notice.summary, "wrap": True},
    ]
    if notice.facts:
        body.append(
            {
                "type": "FactSet",
                "facts": [{"title": label, "value": value} for label, value in notice.facts[:MAX_FACTS]],
            }
        )
    if notice.context:
        body.append(
            {
                "type": "TextBlock",
                "text": " · ".join(notice.context),
                "isSubtle": True,
                "size": "Small",
                "wrap": True,
            }
        )
    card: dict[str, Any] = {
        "$schema": ADAPTIVE_CARD_SCHEMA,
        "type": "AdaptiveCard",
        "version": ADAPTIVE_CARD_VERSION,
        "body": body,
    }
    actions = [
        {"type": "Action.OpenUrl", "title": link.label, "url": link.url} for link in notice.links[:MAX_LINKS]
    ]
    if actions:
        card["actions"] = actions
    return {
        "type": "message",
        "attachments": [{"contentType": ADAPTIVE_CARD_CONTENT_TYPE, "contentUrl": None, "content": card}],
    }
