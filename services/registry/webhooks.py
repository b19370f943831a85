"""Webhooks: every registry event POSTed to configured URLs as a structured-mode CloudEvent.

Delivery is at-least-once and decoupled from Kafka: the outbox keeps each event's webhook state,
a failed POST is retried with exponential backoff, and after `max_attempts` the event is marked
failed (logged and counted) so one dead endpoint cannot hold the rest back. Receivers dedupe on
the CloudEvent `id`. With a secret, each request carries `X-Cascade-Signature: sha256=<hex>`, the
HMAC-SHA256 of the body, so receivers can check it came from this registry.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import urllib.error
import urllib.request
from collections.abc import Sequence

from prometheus_client import Counter

DELIVERIES = Counter("cascade_registry_webhook_deliveries_total", "Webhook POSTs by outcome.", ["outcome"])
SIGNATURE_HEADER = "X-Cascade-Signature"


class WebhookError(Exception):
    pass


def cloudevent_body(event_json: str) -> bytes:
    """The structured-mode CloudEvent: context attributes on top, the whole event as `data`."""
    event = json.loads(event_json)
    envelope = {key: event[key] for key in ("specversion", "id", "type", "source", "time", "subject")}
    return json.dumps({**envelope, "datacontenttype": "application/json", "data": event}).encode()


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSender:
    def __init__(self, urls: Sequence[str], secret: str = "", timeout: float = 5.0) -> None:
        self.urls = list(urls)
        self.secret = secret
        self.timeout = timeout

    async def deliver(self, event_json: str) -> None:
        """POST the event to every URL; raises WebhookError naming each URL that did not take it."""
        body = cloudevent_body(event_json)
        results = await asyncio.gather(*(asyncio.to_thread(self._post, url, body) for url in self.urls))
        failures = [f"{url}: {error}" for url, error in zip(self.urls, results, strict=True) if error]
        DELIVERIES.labels("failed" if failures else "delivered").inc()
        if failures:
            raise WebhookError("; ".join(failures))

    def _post(self, url: str, body: bytes) -> str:
        """'' on a 2xx answer, else what went wrong."""
        headers = {"Content-Type": "application/cloudevents+json; charset=utf-8"}
        if self.secret:
            headers[SIGNATURE_HEADER] = signature(self.secret, body)
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return "" if 200 <= response.status < 300 else f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return str(getattr(exc, "reason", exc))
