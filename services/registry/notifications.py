"""Notifications where the team already talks: Slack, Microsoft Teams, or a CloudEvent webhook.

What is notified, by event kind:

- `promoted`: a version became champion, with its validation metrics beside the old champion's;
- `validation_failed`: the failed gates, their values and thresholds;
- `drift`: the top drifted features and what the loop did about it;
- `load_failed`: serving refused a version (and which one keeps serving);
- `dead_letters`: more than `dead_letter_threshold` messages reached the dead-letter topic in one
  window (once per window; dead letters are counted from their headers, never parsed);
- `approval_requested` / `approval_decided`: a challenger waits for a person, and what they decided;
- `rolled_back`: a rollout stopped (a threshold breached on live traffic, or by hand) and all traffic
  went back to the champion, with the cause; a rollout's promotion is announced as `promoted`.

Destinations (the notifications file) choose models by glob and events by kind. Every message links
to the console page that shows what it is about.

Delivery never holds up the service: the Kafka handler only writes one job per matching destination
(`notification_jobs`, unique on destination and event id, so a redelivered event is not sent
twice), and a background task sends. A failed POST is retried with exponential backoff within a
budget (`max_attempts` tries and `budget_seconds` after the job was made, whichever ends first),
then the job is marked failed; a refusal that no retry mends (HTTP 4xx other than 408 and 429) fails
it at once. Destinations are sent to in parallel, each in its own task, so a dead one delays
no other; one destination's jobs go one at a time, oldest first, so a chat reads in order.

A webhook URL is a secret (it is the credential): it stays in its destination, read from the file
or from `url_file`, and never reaches a log, an error, an event or the job table. Logs and metrics
name the destination.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
import http.client
import json
import logging
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, get_args

import sqlalchemy as sa
import yaml
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, ValidationError, model_validator
from sqlalchemy.dialects import postgresql, sqlite

from cascade.errors import InvalidArgument
from cascade.events import (
    DriftDetected,
    Event,
    ModelApprovalDecided,
    ModelApprovalRequested,
    ModelLoadFailed,
    ModelPromoted,
    ModelTrafficChanged,
    ModelValidated,
)
from cascade.services.registry.chat_cards import Link, Notice, Severity, slack_message, teams_message
from cascade.services.registry.schema import dead_letter_windows, notification_jobs
from cascade.services.registry.store import RegistryStore, VersionRecord
from cascade.services.registry.webhooks import SIGNATURE_HEADER, cloudevent_body, signature

__all__ = [
    "EVENT_KINDS",
    "NOTIFICATIONS",
    "ConsoleLinks",
    "DeliveryPolicy",
    "Destination",
    "Destinations",
    "EventKind",
    "Job",
    "NotificationJobs",
    "Notifier",
    "PostResult",
    "Target",
    "http_post",
    "load_destinations",
]

log = logging.getLogger(__name__)

EventKind = Literal[
    "promoted",
    "validation_failed",
    "drift",
    "load_failed",
    "dead_letters",
    "approval_requested",
    "approval_decided",
    "rolled_back",
]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)
DestinationKind = Literal["slack", "teams", "cloudevent"]

NOTIFICATIONS = Counter(
    "cascade_registry_notifications_total",
    "Chat notification jobs by destination kind and outcome (queued, duplicate, expired, delivered, retried,"
    " failed).",
    ["kind", "outcome"],
)

TOP_FEATURES = 5
MAX_GATES = 10
MAX_DETAIL = 300
SOURCE = "cascade/registry"


# -- destinations ------------------------------------------------------------------------------
class Destination(BaseModel):
    """One entry of the notifications file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$", description="Named in logs and metrics.")
    kind: DestinationKind
    url: SecretStr | None = Field(None, description="The webhook URL; a secret.")
    url_file: Path | None = Field(None, description="A file holding the webhook URL (a mounted secret).")
    secret_file: Path | None = Field(
        None, description="cloudevent only: a file holding the key that signs the body (X-Cascade-Signature)."
    )
    models: list[str] = Field(
        default_factory=lambda: ["*"], min_length=1, description="Globs of model names."
    )
    events: list[EventKind] = Field(default_factory=lambda: list(get_args(EventKind)), min_length=1)

    @model_validator(mode="after")
    def _one_url(self) -> Destination:
        if (self.url is None) == (self.url_file is None):
            raise ValueError("give exactly one of url and url_file")
        if self.secret_file is not None and self.kind != "cloudevent":
            raise ValueError("secret_file signs CloudEvents; a chat webhook's URL is its secret")
        return self

    def wants(self, kind: str, model: str) -> bool:
        """Whether this destination takes `kind` about `model` (dead letters belong to no model)."""
        if kind not in self.events:
            return False
        return kind == "dead_letters" or any(fnmatch.fnmatchcase(model, glob) for glob in self.models)


@dataclass(frozen=True)
class Target:
    """A destination with its secrets read: where and how to POST."""

    destination: Destination
    url: SecretStr
    signing_key: SecretStr

    @property
    def name(self) -> str:
        return self.destination.name


_DESTINATIONS = TypeAdapter(list[Destination])


def _read_secret(path: Path, what: str, name: str) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise InvalidArgument(
            f"destination {name!r}: cannot read its {what} file {path}: {exc.strerror}"
        ) from exc
    if not value:
        raise InvalidArgument(f"destination {name!r}: its {what} file {path} is empty")
    return value


def _http_url(url: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a port that is no number)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def load_destinations(path: Path) -> list[Target]:
    """The destinations of a notifications file (JSON or YAML: a list of destinations), secrets read.
    InvalidArgument says what is wrong, quoting no value (a misspelt `url` key would be the URL)."""
    try:
        document = yaml.safe_load(path.read_text()) or []
    except OSError as exc:
        raise InvalidArgument(f"cannot read the notifications file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        raise InvalidArgument(
            f"the notifications file {path} is neither JSON nor YAML"
            + (f" (line {where.line + 1})" if where is not None else "")
        ) from None
    try:
        destinations = _DESTINATIONS.validate_python(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'file'}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        )
        raise InvalidArgument(f"the notifications file {path} is invalid: {problems}") from None
    names = [d.name for d in destinations]
    if duplicated := sorted({n for n in names if names.count(n) > 1}):
        raise InvalidArgument(f"the notifications file {path} names {', '.join(duplicated)} more than once")
    targets = []
    for destination in destinations:
        if destination.url_file is not None:
            url = _read_secret(destination.url_file, "url", destination.name)
        else:  # the validator made sure one of them is set
            url = destination.url.get_secret_value() if destination.url else ""
        if not _http_url(url):
            raise InvalidArgument(f"destination {destination.name!r}: its url is not an http(s) URL")
        key = (
            _read_secret(destination.secret_file, "secret", destination.name)
            if destination.secret_file
            else ""
        )
        targets.append(Target(destination, SecretStr(url), SecretStr(key)))
    return targets


class Destinations:
    """The notifications file's destinations, re-read when the file changes (so destinations are
    added without a restart). A broken edit is logged and the previous destinations stay."""

    def __init__(self, path: Path | None, targets: Sequence[Target] = ()) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._targets = list(targets)
        if path is not None and path.exists():  # at start-up a broken file stops the registry
            self._stamp = self._stat()
            self._targets = load_destinations(path)

    def _stat(self) -> tuple[int, int] | None:
        assert self.path is not None
        try:
            status = self.path.stat()
        except OSError:
            return None
        return status.st_mtime_ns, status.st_size

    def current(self) -> list[Target]:
        if self.path is None:
            return self._targets
        stamp = self._stat()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._targets = load_destinations(self.path) if stamp is not None else []
                log.info("notifications: %d destinations from %s", len(self._targets), self.path)
            except InvalidArgument as exc:
                log.error("notifications: keeping the previous destinations: %s", exc)
        return self._targets

    def named(self, name: str) -> Target | None:
        return next((t for t in self.current() if t.name == name), None)


# -- links -------------------------------------------------------------------------------------
class ConsoleLinks:
    """URLs of the console's pages; none when no base URL is known."""

    def __init__(self, base_url: str = "", base_url_file: Path | None = None) -> None:
        self._base_url = base_url
        self._base_url_file = base_url_file

    def base(self) -> str:
        if self._base_url_file is not None:
            with contextlib.suppress(OSError):
                if found := self._base_url_file.read_text().strip():
                    return found.rstrip("/")
        return self._base_url.rstrip("/")

    def _page(self, path: str, **query: str | int) -> str:
        base = self.base()
        if not base:
            return ""
        return f"{base}/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")

    def version(self, model: str, version: int) -> str:
        return self._page("models", model=model, version=version)

    def drift(self, model: str) -> str:
        return self._page("drift", model=model)

    def trace(self, trace_id: str) -> str:
        return self._page("traces", trace=trace_id)

    def loop(self) -> str:
        return self._page("")


def _links(*pairs: tuple[str, str]) -> tuple[Link, ...]:
    return tuple(Link(label, url) for label, url in pairs if url)


# -- what a message says -----------------------------------------------------------------------
def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4g}"


def _metrics_against(new: VersionRecord | None, old: VersionRecord | None) -> list[tuple[str, str]]:
    """Each validation metric of `new`, with `old`'s value and the change when it has one."""
    new_metrics, old_metrics = _validation_metrics(new), _validation_metrics(old)
    facts = []
    for name in sorted(new_metrics):
        before = old_metrics.get(name)
        change = "" if before is None else f" (was {_number(before)}, {new_metrics[name] - before:+.4g})"
        facts.append((name, f"{_number(new_metrics[name])}{change}"))
    return facts


def _validation_metrics(record: VersionRecord | None) -> dict[str, float]:
    metrics = (record.validation or {}).get("metrics", {}) if record else {}
    return {str(k): float(v) for k, v in metrics.items() if isinstance(v, int | float)}


def promoted_notice(
    event: ModelPromoted, new: VersionRecord | None, old: VersionRecord | None, links: ConsoleLinks
) -> Notice:
    facts: list[tuple[str, str]] = [
        ("Champion", f"v{event.model_version}"),
        ("Previous champion", f"v{event.previous_version}" if event.previous_version else "none"),
        ("By", event.actor),
        *_metrics_against(new, old),
    ]
    reason = f" Reason: {_clip(event.reason)}" if event.reason else ""
    return Notice(
        kind="promoted",
        title=f"{event.model} v{event.model_version} is champion",
        summary=f"{event.model} v{event.model_version} replaced "
        + (f"v{event.previous_version}" if event.previous_version else "no champion")
        + f" as champion.{reason}",
        severity="good",
        facts=tuple(facts),
        links=_links(
            (f"v{event.model_version} in the console", links.version(event.model, event.model_version)),
            *(
                [(f"v{event.previous_version}", links.version(event.model, event.previous_version))]
                if event.previous_version
                else []
            ),
        ),
        context=_context(event),
    )


def approval_requested_notice(
    event: ModelApprovalRequested,
    new: VersionRecord | None,
    champion: VersionRecord | None,
    links: ConsoleLinks,
) -> Notice:
    champion_text = f"v{event.champion_version}" if event.champion_version else "none"
    facts: list[tuple[str, str]] = [
        ("Challenger", f"v{event.model_version}"),
        ("Champion", champion_text),
        ("Requested by", event.requested_by),
    ]
    if event.superseded_version:
        facts.append(("Supersedes", f"the pending v{event.superseded_version}"))
    facts.extend(_metrics_against(new, champion))
    return Notice(
        kind="approval_requested",
        title=f"{event.model} v{event.model_version} awaits approval",
        summary=f"{event.model} v{event.model_version} passed validation and is the challenger; it "
        f"replaces {champion_text} as champion once someone who manages {event.model} approves it.",
        severity="warning",
        facts=tuple(facts),
        links=_links(
            (f"v{event.model_version} in the console", links.version(event.model, event.model_version)),
            *(
                [(f"Champion v{event.champion_version}", links.version(event.model, event.champion_version))]
                if event.champion_version
                else []
            ),
        ),
        context=_context(event),
    )


_DECISIONS: dict[str, tuple[str, Severity]] = {
    "approved": ("approved: it is the champion", "good"),
    "rejected": ("rejected: the champion stays", "warning"),
    "superseded": ("superseded by a newer candidate", "warning"),
}


def approval_decided_notice(event: ModelApprovalDecided, links: ConsoleLinks) -> Notice:
    said, severity = _DECISIONS.get(event.decision, (event.decision, "warning"))
    facts: list[tuple[str, str]] = [("Decision", event.decision), ("By", event.decided_by)]
    if event.reason:
        facts.append(("Reason", _clip(event.reason)))
    facts.append(("Champion", f"v{event.champion_version}" if event.champion_version else "none"))
    if event.superseded_by:
        facts.append(("Superseded by", f"v{event.superseded_by}"))
    return Notice(
        kind="approval_decided",
        title=f"{event.model} v{event.model_version} {event.decision}",
        summary=f"{event.model} v{event.model_version} was {said}.",
        severity=severity,
        facts=tuple(facts),
        links=_links(
            (f"v{event.model_version} in the console", links.version(event.model, event.model_version)),
            *(
                [(f"v{event.superseded_by}", links.version(event.model, event.superseded_by))]
                if event.superseded_by
                else []
            ),
        ),
        context=_context(event),
    )


def rolled_back_notice(event: ModelTrafficChanged, links: ConsoleLinks) -> Notice:
    """A rollout stopped: the version it rolled out takes no traffic, the champion takes it all."""
    version = event.rollout_version
    named = f"{event.model} v{version}" if version else f"{event.model}'s rollout"
    champion = f"v{event.champion_version}" if event.champion_version else "no champion"
    facts: list[tuple[str, str]] = [
        ("Rolled back", f"v{version}" if version else "the rollout"),
        ("Cause", _clip(event.reason) or "none given"),
    ]
    if event.rollout_step is not None:
        facts.append(("At step", str(event.rollout_step)))
    facts.extend([("Champion", f"{champion} takes all traffic"), ("By", event.actor)])
    return Notice(
        kind="rolled_back",
        title=f"{named} rolled back",
        summary=f"The rollout of {named} stopped and all traffic went back to {champion}. "
        f"Cause: {_clip(event.reason) or 'none given'}",
        severity="attention",
        facts=tuple(facts),
        links=_links(
            *([(f"v{version} in the console", links.version(event.model, version))] if version else []),
            *(
                [(f"Champion {champion}", links.version(event.model, event.champion_version))]
                if event.champion_version
                else []
            ),
        ),
        context=_context(event),
    )


def validation_failed_notice(event: ModelValidated, links: ConsoleLinks) -> Notice:
    failed = [gate for gate in event.gates if not gate.passed]
    facts = [
        (
            f"✗ {gate.name}",
            f"{_number(gate.value)} against threshold {_number(gate.threshold)}"
            + (f": {_clip(gate.detail, 200)}" if gate.detail else ""),
        )
        for gate in failed[:MAX_GATES]
    ]
    if len(failed) > MAX_GATES:
        facts.append(("More", f"{len(failed) - MAX_GATES} more failed gates in the console"))
    facts.append(("Gates passed", f"{len(event.gates) - len(failed)} of {len(event.gates)}"))
    if event.champion_version:
        facts.append(("Champion", f"v{event.champion_version} stays"))
    names = ", ".join(gate.name for gate in failed) or "no gate named"
    return Notice(
        kind="validation_failed",
        title=f"{event.model} v{event.model_version} failed validation",
        summary=f"{event.model} v{event.model_version} failed {names}; it is not promoted.",
        severity="attention",
        facts=tuple(facts),
        links=_links(
            (f"v{event.model_version} in the console", links.version(event.model, event.model_version))
        ),
        context=_context(event),
    )


_ACTIONS = {
    "retrain": "Retraining on the dataset's newer version.",
    "feedback": "Labelled production rows went to ingest as a feedback batch, which retrains.",
    "no_new_data": "Nothing retrained: the champion has already learned from all the data there is.",
}


def _top_drifted(report: Mapping[str, Any], drifted: Sequence[str]) -> list[tuple[str, str]]:
    """The drifted features furthest past their thresholds, with their test and score."""
    rows = []
    for entry in report.get("features") or []:
        if not isinstance(entry, Mapping) or not entry.get("drifted"):
            continue
        p_value, statistic, threshold = entry.get("p_value"), entry.get("statistic"), entry.get("threshold")
        if isinstance(p_value, int | float) and isinstance(threshold, int | float):
            severity = threshold / max(float(p_value), 1e-300)
            text = f"{entry.get('test', '')}: p = {_number(p_value)} (threshold {_number(threshold)})"
        elif isinstance(statistic, int | float) and isinstance(threshold, int | float) and threshold:
            severity = float(statistic) / float(threshold)
            text = f"{entry.get('test', '')}: {_number(statistic)} (threshold {_number(threshold)})"
        else:
            continue
        rows.append((severity, str(entry.get("feature", "?")), text))
    if not rows:  # a report without per-feature entries: the names the event carries
        return [(name, "drifted") for name in drifted[:TOP_FEATURES]]
    rows.sort(key=lambda row: -row[0])
    return [(name, text) for _, name, text in rows[:TOP_FEATURES]]


def _attribution_moves(report: Mapping[str, Any]) -> str:
    """The features whose share of the champion's attributions moved most (the monitor's
    `attribution_shift`, largest first), e.g. "amount 12% → 31%"."""
    moves = []
    for entry in (report.get("attribution_shift") or [])[:3]:
        if not isinstance(entry, Mapping):
            continue
        before, after = entry.get("reference_share"), entry.get("window_share")
        if isinstance(before, int | float) and isinstance(after, int | float):
            moves.append(f"{entry.get('feature', '?')} {before:.0%} → {after:.0%}")
    return ", ".join(moves)


def drift_notice(event: DriftDetected, links: ConsoleLinks) -> Notice:
    top = _top_drifted(event.report, event.drifted_features)
    facts = [
        ("Champion", f"v{event.model_version}"),
        ("Drifted features", f"{len(event.drifted_features)}"),
        *top,
    ]
    if moves := _attribution_moves(event.report):
        facts.append(("Attribution moved", moves))
    facts.append(("What the loop did", _ACTIONS.get(event.action, event.action)))
    return Notice(
        kind="drift",
        title=f"{event.kind.capitalize()} detected on {event.model}",
        summary=_clip(event.summary, 1000),
        severity="warning",
        facts=tuple(facts),
        links=_links(
            ("Drift in the console", links.drift(event.model)),
            (f"v{event.model_version}", links.version(event.model, event.model_version)),
        ),
        context=_context(event),
    )


def load_failed_notice(event: ModelLoadFailed, links: ConsoleLinks) -> Notice:
    keeps = f"v{event.serving_version} keeps serving" if event.serving_version else "no version is serving"
    facts = [("Reason", event.reason), ("Serving", keeps)]
    if event.instance:
        facts.append(("Instance", event.instance))
    if event.detail:
        facts.append(("Detail", _clip(event.detail)))
    return Notice(
        kind="load_failed",
        title=f"Serving refused {event.model} v{event.model_version}",
        summary=f"Serving could not load {event.model} v{event.model_version} ({event.reason}); {keeps}.",
        severity="attention",
        facts=tuple(facts),
        links=_links(
            (f"v{event.model_version} in the console", links.version(event.model, event.model_version))
        ),
        context=_context(event),
    )


def dead_letters_notice(
    count: int,
    threshold: int,
    window_start: datetime,
    window_seconds: int,
    headers: Mapping[str, str],
    links: ConsoleLinks,
) -> Notice:
    facts = [
        ("Dead letters", f"{count} since {window_start:%Y-%m-%d %H:%M} UTC"),
        ("Threshold", f"{threshold} per {window_seconds // 60} min"),
    ]
    for label, header in (("Last from", "cascade_dlq_service"), ("Its topic", "cascade_dlq_topic")):
        if headers.get(header):
            facts.append((label, _clip(headers[header], 200)))
    if headers.get("cascade_dlq_reason"):
        facts.append(("Its reason", _clip(headers["cascade_dlq_reason"])))
    return Notice(
        kind="dead_letters",
        title=f"{count} dead letters this window",
        summary=f"{count} messages reached the dead-letter topic since {window_start:%H:%M} UTC "
        f"(threshold {threshold}). `cascade dlq list` shows them; `cascade dlq replay` puts them back.",
        severity="attention",
        facts=tuple(facts),
        links=_links(("The loop in the console", links.loop())),
    )


def _dead_lettered_at(headers: Mapping[str, str]) -> datetime | None:
    try:
        return _utc(datetime.fromisoformat(headers.get("cascade_dlq_time", "")))
    except ValueError:
        return None


def _clip(text: str, limit: int = MAX_DETAIL) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _context(event: Event) -> tuple[str, ...]:
    return (f"model {event.subject}", f"event {event.id}", f"{event.time:%Y-%m-%d %H:%M:%S} UTC")


# -- delivery ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeliveryPolicy:
    timeout_seconds: float = 5.0
    max_attempts: int = 8
    budget_seconds: float = 3600.0
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 300.0
    max_in_flight: int = 32

    def backoff(self, attempts: int, retry_after: float | None = None) -> float:
        """The pause after the `attempts`-th failed try: doubling, capped; at least what a 429 asked."""
        pause = min(self.backoff_seconds * 2.0 ** min(attempts - 1, 32), self.backoff_max_seconds)
        return min(max(pause, retry_after or 0.0), self.backoff_max_seconds)

    @property
    def lease_seconds(self) -> float:
        """How long a claimed job is left alone: past its POST's timeout, so it is not sent twice."""
        return 2 * self.timeout_seconds + 5.0


@dataclass(frozen=True)
class PostResult:
    status: int  # 0: no HTTP answer
    error: str = ""  # what went wrong, never containing the URL
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return 200 <= self.status < 300

    @property
    def permanent(self) -> bool:
        """A refusal no retry mends: the payload, or a revoked or unknown webhook."""
        return 400 <= self.status < 500 and self.status not in (408, 429)


Post = Callable[[str, bytes, Mapping[str, str], float], PostResult]


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: the backoff decides


def http_post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> PostResult:
    """POST `body`; what came back. Errors are described by status or exception type and reason,
    never with the URL (urllib puts it in some messages)."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return PostResult(response.status)
    except urllib.error.HTTPError as exc:
        return PostResult(exc.code, f"HTTP {exc.code}", _retry_after(exc.headers.get("Retry-After")))
    except urllib.error.URLError as exc:
        return PostResult(0, _scrub(f"{type(exc.reason).__name__}: {exc.reason}", url))
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return PostResult(0, _scrub(f"{type(exc).__name__}: {exc}", url))


def _scrub(text: str, url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    for secret in {url, parts.path, parts.query}:
        if len(secret) > 1:
            text = text.replace(secret, "<url>")
    return text[:500]


@dataclass(frozen=True)
class Job:
    id: int
    destination: str
    event_kind: str
    body_json: str
    attempts: int
    deadline: datetime


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class NotificationJobs:
    """The durable job table (migration 0004): at most one job per destination and event id."""

    def __init__(self, store: RegistryStore) -> None:
        self.store = store

    def _insert(self) -> Any:
        return (postgresql if self.store.dialect == "postgresql" else sqlite).insert(notification_jobs)

    def add(self, db: sa.Connection, rows: Sequence[dict[str, Any]]) -> list[bool]:
        """Insert each row unless its (destination, event id) is there already; which were new."""
        added = []
        for row in rows:
            statement = (
                self._insert()
                .values(**row)
                .on_conflict_do_nothing(index_elements=["destination", "event_id"])
            )
            added.append(db.execute(statement.returning(notification_jobs.c.id)).first() is not None)
        return added

    def claim_due(self, now: datetime, lease: timedelta, limit: int, busy: Collection[str] = ()) -> list[Job]:
        """The oldest due pending job of each destination not `busy` (at most `limit`), each claimed
        for `lease` by moving its next try (compare-and-set, so two registries never both send one).
        One job per destination at a time keeps a destination's messages in their order."""
        if limit <= 0:
            return []
        due = [notification_jobs.c.state == "pending", notification_jobs.c.next_at <= now]
        if busy:
            due.append(notification_jobs.c.destination.not_in(list(busy)))
        firsts = (
            sa.select(sa.func.min(notification_jobs.c.id))
            .where(*due)
            .group_by(notification_jobs.c.destination)
            .limit(limit)
        )
        query = (
            sa.select(notification_jobs)
            .where(notification_jobs.c.id.in_(firsts))
            .order_by(notification_jobs.c.id)
        )
        # Read first, without the write lock (SQLite takes it at BEGIN): most rounds find nothing.
        with self.store.reader.connect() as reader:
            rows = reader.execute(query).mappings().all()
        if not rows:
            return []
        claimed = []
        with self.store.transaction() as db:
            for row in rows:
                moved = db.execute(
                    notification_jobs.update()
                    .where(notification_jobs.c.id == row["id"], notification_jobs.c.next_at == row["next_at"])
                    .values(next_at=now + lease)
                )
                if moved.rowcount == 1:
                    claimed.append(
                        Job(
                            int(row["id"]),
                            str(row["destination"]),
                            str(row["event_kind"]),
                            str(row["body_json"]),
                            int(row["attempts"]),
                            _utc(row["deadline"]),
                        )
                    )
        return claimed

    def record(self, job_id: int, state: str, attempts: int, next_at: datetime, error: str) -> None:
        with self.store.transaction() as db:
            db.execute(
                notification_jobs.update()
                .where(notification_jobs.c.id == job_id)
                .values(state=state, attempts=attempts, next_at=next_at, error=error or None)
            )

    def states(self) -> dict[str, int]:
        """Jobs in each state, e.g. {"delivered": 3, "pending": 1} (for tests and operators)."""
        query = sa.select(notification_jobs.c.state, sa.func.count()).group_by(notification_jobs.c.state)
        with self.store.reader.connect() as db:
            return {str(state): int(count) for state, count in db.execute(query)}

    def count_dead_letter(self, db: sa.Connection, window_start: datetime, threshold: int) -> int | None:
        """Count one dead letter in its window; the window's count if this one crossed the
        threshold (the first to do so, so the notice goes out once per window), else None."""
        insert = (postgresql if self.store.dialect == "postgresql" else sqlite).insert(dead_letter_windows)
        counted = db.execute(
            insert.values(window_start=window_start, count=1, notified=False)
            .on_conflict_do_update(
                index_elements=["window_start"], set_={"count": dead_letter_windows.c.count + 1}
            )
            .returning(dead_letter_windows.c.count)
        ).scalar_one()
        if counted < threshold:
            return None
        first = db.execute(
            dead_letter_windows.update()
            .where(
                dead_letter_windows.c.window_start == window_start,
                dead_letter_windows.c.notified == sa.false(),
            )
            .values(notified=True)
        )
        return int(counted) if first.rowcount == 1 else None


class Notifier:
    """Turns events into delivery jobs (`record`, called by the Kafka handlers) and sends them (`run`)."""

    def __init__(
        self,
        store: RegistryStore,
        destinations: Destinations,
        links: ConsoleLinks,
        policy: DeliveryPolicy | None = None,
        dead_letter_threshold: int = 10,
        dead_letter_window_seconds: int = 3600,
        post: Post = http_post,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.jobs = NotificationJobs(store)
        self.destinations = destinations
        self.links = links
        self.policy = policy or DeliveryPolicy()
        self.dead_letter_threshold = dead_letter_threshold
        self.dead_letter_window_seconds = dead_letter_window_seconds
        self._post = post
        self._clock = clock
        self._wake = asyncio.Event()
        self._busy: dict[str, asyncio.Task[None]] = {}  # destination -> the task sending its job

    # -- recording (the Kafka side) ------------------------------------------------------------
    def notice_for(self, event: Event) -> Notice | None:
        """What to say about `event`, or None if it is nothing to notify."""
        if isinstance(event, ModelPromoted):
            new = self._version(event.model, event.model_version)
            old = self._version(event.model, event.previous_version) if event.previous_version else None
            return promoted_notice(event, new, old, self.links)
        if isinstance(event, ModelValidated):
            return None if event.passed else validation_failed_notice(event, self.links)
        if isinstance(event, DriftDetected):
            return drift_notice(event, self.links)
        if isinstance(event, ModelLoadFailed):
            return load_failed_notice(event, self.links)
        if isinstance(event, ModelApprovalRequested):
            new = self._version(event.model, event.model_version)
            champion = self._version(event.model, event.champion_version) if event.champion_version else None
            return approval_requested_notice(event, new, champion, self.links)
        if isinstance(event, ModelApprovalDecided):
            return approval_decided_notice(event, self.links)
        if isinstance(event, ModelTrafficChanged):  # of its moves, only a rollback is news
            return rolled_back_notice(event, self.links) if event.action == "rolled_back" else None
        return None

    def _version(self, model: str, version: int) -> VersionRecord | None:
        try:
            return self.store.get(model, version)
        except Exception:  # a message without the old metrics beats no message
            return None

    def record(self, event: Event, trace_id: str = "") -> int:
        """Write one job per destination that wants `event`; how many were new (a redelivered
        event adds none). Blocking: call it from a worker thread."""
        targets = self.destinations.current()
        if not targets:
            return 0
        notice = self.notice_for(event)
        if notice is None:
            return 0
        if trace_id and (trace_url := self.links.trace(trace_id)):
            notice = Notice(**{**notice.__dict__, "links": (*notice.links, Link("Trace", trace_url))})
        wanted = [t for t in targets if t.destination.wants(notice.kind, event.subject)]
        deadline = _utc(event.time) + timedelta(seconds=self.policy.budget_seconds)
        if wanted and deadline <= self._clock():
            # Older than the budget (a new consumer group reading the topic's history, say): news
            # no more; sending it now would flood the channel with the past.
            for target in wanted:
                NOTIFICATIONS.labels(target.destination.kind, "expired").inc()
            log.info(
                "notifications: %s of %s from %s is past its budget; not sent",
                notice.kind,
                event.subject,
                event.time,
            )
            return 0
        with self.store.transaction() as db:
            return self._add(db, wanted, notice, event.id, event.subject, event.model_dump_json(), deadline)

    async def take(self, event: Event, trace_id: str = "") -> int:
        """`record` from the event loop (the Kafka handler), waking the sender."""
        added = await asyncio.to_thread(self.record, event, trace_id)
        if added:
            self._wake.set()
        return added

    async def take_dead_letter(self, headers: Mapping[str, str]) -> int:
        """`record_dead_letter` from the event loop (the Kafka handler), waking the sender."""
        added = await asyncio.to_thread(self.record_dead_letter, headers)
        if added:
            self._wake.set()
        return added

    def record_dead_letter(self, headers: Mapping[str, str]) -> int:
        """Count one dead letter (never parsed: only its headers are read); when its window's count
        reaches the threshold, write the window's one notice. How many jobs were written."""
        if self.dead_letter_threshold <= 0:
            return 0
        now = self._clock()
        seconds = self.dead_letter_window_seconds

        def window_of(moment: datetime) -> datetime:
            return datetime.fromtimestamp(int(moment.timestamp()) // seconds * seconds, UTC)

        window_start = window_of(now)
        if window_of(_dead_lettered_at(headers) or now) != window_start:
            return 0  # a letter of a past window (history read anew): that window is over
        with self.store.transaction() as db:
            count = self.jobs.count_dead_letter(db, window_start, self.dead_letter_threshold)
            if count is None:
                return 0
            notice = dead_letters_notice(
                count, self.dead_letter_threshold, window_start, seconds, headers, self.links
            )
            event_id = f"dead-letters/{window_start:%Y-%m-%dT%H:%M:%SZ}"
            envelope = {
                "specversion": "1.0",
                "id": event_id,
                "type": "io.cascade.notification.dead_letters.v1",
                "source": SOURCE,
                "time": now.isoformat(),
                "subject": "dead-letters",
                "count": count,
                "threshold": self.dead_letter_threshold,
                "window_start": window_start.isoformat(),
                "window_seconds": seconds,
            }
            wanted = [t for t in self.destinations.current() if t.destination.wants("dead_letters", "")]
            deadline = now + timedelta(seconds=self.policy.budget_seconds)
            return self._add(db, wanted, notice, event_id, "", json.dumps(envelope), deadline)

    def _add(
        self,
        db: sa.Connection,
        targets: Sequence[Target],
        notice: Notice,
        event_id: str,
        model: str,
        event_json: str,
        deadline: datetime,
    ) -> int:
        """Write the jobs in `db` (the Kafka handler's thread); the sender finds them at its next round."""
        now = self._clock()
        rows = [
            {
                "destination": target.name,
                "event_id": event_id,
                "event_kind": notice.kind,
                "model": model,
                "body_json": _body(target.destination.kind, notice, event_json),
                "state": "pending",
                "attempts": 0,
                "next_at": now,
                "deadline": deadline,
                "created_at": now,
            }
            for target in targets
        ]
        added = self.jobs.add(db, rows)
        for target, new in zip(targets, added, strict=True):
            NOTIFICATIONS.labels(target.destination.kind, "queued" if new else "duplicate").inc()
        return sum(added)

    # -- sending (the background task) ---------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    async def run(self, interval: float = 1.0) -> None:
        """Forever: send what is due, each job in its own task; then sleep until woken or `interval`."""
        try:
            while True:
                try:
                    await self.send_due()
                except Exception:
                    log.exception("notifications: reading due jobs failed; trying again")
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), interval)
        finally:
            for task in list(self._busy.values()):
                task.cancel()

    async def send_due(self) -> list[asyncio.Task[None]]:
        """Claim the due jobs, one per destination not already sending, and start sending each in
        its own task (so a destination that hangs holds up only itself); the tasks started."""
        room = self.policy.max_in_flight - len(self._busy)
        lease = timedelta(seconds=self.policy.lease_seconds)
        jobs = await asyncio.to_thread(self.jobs.claim_due, self._clock(), lease, room, set(self._busy))
        started = []
        for job in jobs:
            task = asyncio.create_task(self._send(job))
            self._busy[job.destination] = task
            task.add_done_callback(functools.partial(self._done, job.destination))
            started.append(task)
        return started

    def _done(self, destination: str, _task: asyncio.Task[None]) -> None:
        self._busy.pop(destination, None)
        self._wake.set()  # the destination's next job, if any, may go now

    async def drain(self) -> None:
        """Send until nothing is due now (tests; a retry due later waits for its time)."""
        while started := await self.send_due():
            await asyncio.gather(*started)

    async def _send(self, job: Job) -> None:
        try:
            await self._attempt(job)
        except Exception:
            log.exception("notifications: sending job %d to %s failed", job.id, job.destination)

    async def _attempt(self, job: Job) -> None:
        target = self.destinations.named(job.destination)
        attempts = job.attempts + 1
        if target is None:
            await self._finish(job, attempts, "failed", "the destination is no longer configured", "unknown")
            return
        kind = target.destination.kind
        body = job.body_json.encode()
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if kind == "cloudevent":
            headers["Content-Type"] = "application/cloudevents+json; charset=utf-8"
            if key := target.signing_key.get_secret_value():
                headers[SIGNATURE_HEADER] = signature(key, body)
        url = target.url.get_secret_value()
        try:
            result = await asyncio.to_thread(self._post, url, body, headers, self.policy.timeout_seconds)
        except Exception as exc:  # a failed attempt like any other, within the same budget
            result = PostResult(0, _scrub(f"{type(exc).__name__}: {exc}", url))
        if result.delivered:
            await self._finish(job, attempts, "delivered", "", kind)
            return
        error = _scrub(result.error or f"HTTP {result.status}", url)
        pause = self.policy.backoff(attempts, result.retry_after)
        next_at = self._clock() + timedelta(seconds=pause)
        if result.permanent or attempts >= self.policy.max_attempts or next_at > job.deadline:
            why = "refused" if result.permanent else f"gave up after {attempts} attempts"
            await self._finish(job, attempts, "failed", f"{why}: {error}", kind)
            return
        log.warning(
            "notification %s (job %d) to %s: attempt %d failed (%s), retrying in %.1f s",
            job.event_kind,
            job.id,
            target.name,
            attempts,
            error,
            pause,
        )
        NOTIFICATIONS.labels(kind, "retried").inc()
        await asyncio.to_thread(self.jobs.record, job.id, "pending", attempts, next_at, error)
        self._wake.set()

    async def _finish(self, job: Job, attempts: int, state: str, error: str, kind: str) -> None:
        if state == "failed":
            log.error(
                "notification %s (job %d) to %s failed: %s", job.event_kind, job.id, job.destination, error
            )
        else:
            log.info("notification %s (job %d) delivered to %s", job.event_kind, job.id, job.destination)
        NOTIFICATIONS.labels(kind, state).inc()
        await asyncio.to_thread(self.jobs.record, job.id, state, attempts, self._clock(), error)


def _body(kind: DestinationKind, notice: Notice, event_json: str) -> str:
    if kind == "slack":
        return json.dumps(slack_message(notice))
    if kind == "teams":
        return json.dumps(teams_message(notice))
    return cloudevent_body(event_json).decode()
