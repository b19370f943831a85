"""A local chat webhook receiver for tests: Slack, Teams and CloudEvent endpoints on loopback that
check every payload against the shapes the platforms accept and answer 400 to anything else.

The shapes are those Cascade's messages use, with the platforms' documented limits:

- Slack Block Kit (api.slack.com/reference/block-kit): `text` and 1..50 `blocks` of type header,
  section, context, actions or divider; text objects plain_text or mrkdwn; a header's text at most
  150 characters, a section's 3000, at most 10 fields of 2000; a context's 1..10 text elements; an
  actions block's 1..25 buttons, each with plain_text of at most 75 and an http(s) url.
- Teams (incoming webhook / workflow): {"type": "message", "attachments": [one Adaptive Card]}
  with contentType application/vnd.microsoft.card.adaptive; the card's $schema, version 1.4 or 1.5,
  a body of TextBlock, FactSet and ColumnSet, and actions of Action.OpenUrl with an http(s) url.
- CloudEvent: structured mode, the registry's webhook body.

Paths choose the endpoint: /slack/<name>, /teams/<name>, /cloudevent/<name>. `script(path, ...)`
makes one answer with given statuses first (500, 429 ...), and `hang(path)` never answers.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ADAPTIVE = "application/vnd.microsoft.card.adaptive"
ADAPTIVE_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"


class ShapeError(ValueError):
    """A payload the platform would refuse."""


def _require(condition: bool, problem: str) -> None:
    if not condition:
        raise ShapeError(problem)


def _only_keys(node: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = set(node) - allowed
    _require(not extra, f"{where}: unexpected keys {sorted(extra)}")


def _http_url(value: Any, where: str, limit: int = 3000) -> None:
    _require(
        isinstance(value, str) and value.startswith(("http://", "https://")), f"{where}: not an http(s) url"
    )
    _require(len(value) <= limit, f"{where}: url longer than {limit}")


# -- Slack -------------------------------------------------------------------------------------
def _slack_text(node: Any, where: str, limit: int, plain_only: bool = False) -> None:
    _require(isinstance(node, dict), f"{where}: a text object must be an object")
    kinds = {"plain_text"} if plain_only else {"plain_text", "mrkdwn"}
    _require(node.get("type") in kinds, f"{where}: text type {node.get('type')!r} not in {sorted(kinds)}")
    _only_keys(
        node,
        {"type", "text", "emoji"} if node["type"] == "plain_text" else {"type", "text", "verbatim"},
        where,
    )
    text = node.get("text")
    _require(isinstance(text, str) and 0 < len(text) <= limit, f"{where}: text must be 1..{limit} characters")


def validate_slack(payload: Any) -> None:
    _require(isinstance(payload, dict), "the payload must be a JSON object")
    _only_keys(payload, {"text", "blocks"}, "message")
    _require(isinstance(payload.get("text"), str) and payload["text"], "message: a fallback text is required")
    blocks = payload.get("blocks")
    _require(isinstance(blocks, list) and 1 <= len(blocks) <= 50, "message: blocks must be a list of 1..50")
    for number, block in enumerate(blocks):
        where = f"blocks[{number}]"
        _require(isinstance(block, dict), f"{where}: a block must be an object")
        kind = block.get("type")
        if kind == "header":
            _only_keys(block, {"type", "text", "block_id"}, where)
            _slack_text(block.get("text"), where, 150, plain_only=True)
        elif kind == "section":
            _only_keys(block, {"type", "text", "fields", "block_id"}, where)
            _require("text" in block or "fields" in block, f"{where}: a section needs text or fields")
            if "text" in block:
                _slack_text(block["text"], where, 3000)
            if "fields" in block:
                fields = block["fields"]
                _require(isinstance(fields, list) and 1 <= len(fields) <= 10, f"{where}: 1..10 fields")
                for index, item in enumerate(fields):
                    _slack_text(item, f"{where}.fields[{index}]", 2000)
        elif kind == "context":
            _only_keys(block, {"type", "elements", "block_id"}, where)
            elements = block.get("elements")
            _require(isinstance(elements, list) and 1 <= len(elements) <= 10, f"{where}: 1..10 elements")
            for index, item in enumerate(elements):
                _slack_text(item, f"{where}.elements[{index}]", 2000)
        elif kind == "actions":
            _only_keys(block, {"type", "elements", "block_id"}, where)
            elements = block.get("elements")
            _require(isinstance(elements, list) and 1 <= len(elements) <= 25, f"{where}: 1..25 elements")
            for index, button in enumerate(elements):
                at = f"{where}.elements[{index}]"
                _require(isinstance(button, dict) and button.get("type") == "button", f"{at}: only buttons")
                _only_keys(button, {"type", "text", "url", "action_id", "style", "value"}, at)
                _slack_text(button.get("text"), at, 75, plain_only=True)
                _http_url(button.get("url"), at)
        elif kind == "divider":
            _only_keys(block, {"type", "block_id"}, where)
        else:
            raise ShapeError(f"{where}: block type {kind!r} is not one the messages use")


# -- Teams -------------------------------------------------------------------------------------
_TEXT_BLOCK_KEYS = {
    "type",
    "text",
    "wrap",
    "weight",
    "size",
    "color",
    "isSubtle",
    "spacing",
    "separator",
    "maxLines",
}
_WEIGHTS = {"Default", "Lighter", "Bolder"}
_SIZES = {"Default", "Small", "Medium", "Large", "ExtraLarge"}
_COLORS = {"Default", "Dark", "Light", "Accent", "Good", "Warning", "Attention"}


def _card_element(element: Any, where: str) -> None:
    _require(isinstance(element, dict), f"{where}: an element must be an object")
    kind = element.get("type")
    if kind == "TextBlock":
        _only_keys(element, _TEXT_BLOCK_KEYS, where)
        _require(isinstance(element.get("text"), str) and element["text"], f"{where}: a TextBlock needs text")
        _require(element.get("weight", "Default") in _WEIGHTS, f"{where}: weight")
        _require(element.get("size", "Default") in _SIZES, f"{where}: size")
        _require(element.get("color", "Default") in _COLORS, f"{where}: color")
    elif kind == "FactSet":
        _only_keys(element, {"type", "facts", "spacing", "separator"}, where)
        facts = element.get("facts")
        _require(isinstance(facts, list) and facts, f"{where}: a FactSet needs facts")
        for index, fact in enumerate(facts):
            _require(
                isinstance(fact, dict)
                and set(fact) == {"title", "value"}
                and all(isinstance(fact[k], str) for k in fact),
                f"{where}.facts[{index}]: a fact is {{title, value}} strings",
            )
    elif kind == "ColumnSet":
        _only_keys(element, {"type", "columns", "spacing", "separator"}, where)
        columns = element.get("columns")
        _require(isinstance(columns, list) and columns, f"{where}: a ColumnSet needs columns")
        for index, column in enumerate(columns):
            at = f"{where}.columns[{index}]"
            _require(isinstance(column, dict) and column.get("type") == "Column", f"{at}: a Column")
            _only_keys(column, {"type", "items", "width"}, at)
            for item_index, item in enumerate(column.get("items", [])):
                _card_element(item, f"{at}.items[{item_index}]")
    else:
        raise ShapeError(f"{where}: element type {kind!r} is not one the messages use")


def validate_teams(payload: Any) -> None:
    _require(isinstance(payload, dict), "the payload must be a JSON object")
    _only_keys(payload, {"type", "attachments"}, "message")
    _require(payload.get("type") == "message", "message: type must be 'message'")
    attachments = payload.get("attachments")
    _require(isinstance(attachments, list) and len(attachments) == 1, "message: exactly one attachment")
    attachment = attachments[0]
    _require(isinstance(attachment, dict), "attachments[0]: an object")
    _only_keys(attachment, {"contentType", "contentUrl", "content"}, "attachments[0]")
    _require(attachment.get("contentType") == ADAPTIVE, f"attachments[0]: contentType must be {ADAPTIVE}")
    _require(attachment.get("contentUrl") is None, "attachments[0]: contentUrl must be null")
    card = attachment.get("content")
    _require(isinstance(card, dict), "content: an object")
    _only_keys(card, {"$schema", "type", "version", "body", "actions", "msteams"}, "content")
    _require(card.get("type") == "AdaptiveCard", "content: type must be AdaptiveCard")
    _require(card.get("$schema") == ADAPTIVE_SCHEMA, "content: $schema")
    _require(card.get("version") in ("1.4", "1.5"), "content: version must be 1.4 or 1.5")
    body = card.get("body")
    _require(isinstance(body, list) and body, "content: a body is required")
    for index, element in enumerate(body):
        _card_element(element, f"body[{index}]")
    for index, action in enumerate(card.get("actions", [])):
        at = f"actions[{index}]"
        _require(
            isinstance(action, dict) and action.get("type") == "Action.OpenUrl", f"{at}: only Action.OpenUrl"
        )
        _only_keys(action, {"type", "title", "url"}, at)
        _require(isinstance(action.get("title"), str) and action["title"], f"{at}: a title")
        _http_url(action.get("url"), at)


# -- CloudEvent --------------------------------------------------------------------------------
def validate_cloudevent(payload: Any) -> None:
    _require(isinstance(payload, dict), "the payload must be a JSON object")
    for key in ("specversion", "id", "type", "source", "time", "subject", "datacontenttype"):
        _require(isinstance(payload.get(key), str) and payload[key], f"cloudevent: {key} is required")
    _require(payload["specversion"] == "1.0", "cloudevent: specversion 1.0")
    _require(isinstance(payload.get("data"), dict), "cloudevent: data must be an object")


VALIDATORS = {"slack": validate_slack, "teams": validate_teams, "cloudevent": validate_cloudevent}


# -- the server --------------------------------------------------------------------------------
@dataclass
class Received:
    path: str
    headers: dict[str, str]
    payload: Any


@dataclass
class ChatReceiver:
    """Records accepted payloads by path; answers 400 (with the reason) to a malformed one."""

    accepted: list[Received] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    attempts: dict[str, int] = field(default_factory=dict)
    _scripts: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    _hanging: set[str] = field(default_factory=set)
    _release: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _arrived: threading.Condition = field(init=False)
    port: int = 0

    def __post_init__(self) -> None:
        self._arrived = threading.Condition(self._lock)

    def url(self, kind: str, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{kind}/{name}"

    def script(self, path: str, *answers: int | tuple[int, dict[str, str]]) -> None:
        """The first answers to POSTs on `path` (then 200), e.g. 500, (429, {"Retry-After": "0"})."""
        self._scripts[path] = [a if isinstance(a, tuple) else (a, {}) for a in answers]

    def hang(self, path: str) -> None:
        """POSTs on `path` are read and never answered (until the receiver stops)."""
        self._hanging.add(path)

    def on(self, path: str) -> list[Any]:
        with self._lock:
            return [r.payload for r in self.accepted if r.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 30.0) -> list[Any]:
        with self._arrived:
            self._arrived.wait_for(
                lambda: len([r for r in self.accepted if r.path == path]) >= count, timeout
            )
            return [r.payload for r in self.accepted if r.path == path]

    def wait_attempted(self, path: str, timeout: float = 30.0) -> int:
        """How many POSTs reached `path`, once one has (answered or not)."""
        with self._arrived:
            self._arrived.wait_for(lambda: self.attempts.get(path, 0) > 0, timeout)
            return self.attempts.get(path, 0)

    def _handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        with self._arrived:
            self.attempts[path] = self.attempts.get(path, 0) + 1
            self._arrived.notify_all()
            script = self._scripts.get(path)
            scripted = script.pop(0) if script else None
        if path in self._hanging:
            self._release.wait()
            return 503, {}, b""
        if scripted is not None:
            return scripted[0], scripted[1], b"scripted"
        kind = path.strip("/").split("/")[0]
        try:
            validate = VALIDATORS[kind]
        except KeyError:
            return 404, {}, b"no such endpoint"
        try:
            payload = json.loads(body)
            validate(payload)
        except (ValueError, ShapeError) as exc:
            with self._lock:
                self.rejected.append((path, str(exc)))
            return 400, {}, str(exc).encode()
        with self._arrived:
            self.accepted.append(Received(path, headers, payload))
            self._arrived.notify_all()
        return 200, {}, b"ok"


@contextmanager
def running_receiver(port: int = 0) -> Iterator[ChatReceiver]:
    receiver = ChatReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status, headers, answer = receiver._handle(self.path, dict(self.headers), body)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver._release.set()
        server.shutdown()
        server.server_close()
