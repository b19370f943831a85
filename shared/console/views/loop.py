"""The console's Loop page: is the stack up, is Kafka keeping up, and where is each cascade now.

    Services       each service's gRPC health
    Delivery       consumer lag and dead letters per service and topic (read from Kafka)
    Cascades       the newest dataset versions, each followed to the model version trained on it:
                   uploaded -> trained -> validated -> promoted -> serving, or failed, with the gate
    Recent events  the latest events of the cascade's topics

Every part refreshes on its own every `refresh_seconds` (a Streamlit fragment). The reads are made
in the background by one feed each (cascade.console.feeds), shared by every viewer: a view shows
the latest reading at once, with its time, instead of waiting seconds for health probes and Kafka.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
import streamlit as st

from cascade.client.delivery import DeliveryStatus, RecentEvent, delivery_status, recent_events
from cascade.client.records import DatasetVersion, Model, ModelVersion, VersionStatus
from cascade.client.sdk import AsyncClient
from cascade.console.connection import SERVICES, client_of, signed_in_token, stack_view
from cascade.console.feeds import Feed, Reading
from cascade.console.tables import NONE, markdown_literal
from cascade.errors import CascadeError
from cascade.healthcheck import probe

STAGES = ("uploaded", "trained", "validated", "promoted", "serving")
# The cascades shown: the newest dataset versions across every dataset, so a page costs a bounded
# number of calls however many versions the datasets have.
NEWEST_DATASET_VERSIONS = 10
EVENTS_SHOWN = 30
_HEALTH_TIMEOUT = 1.0
# A first view waits this long for the feeds' first readings.
_FIRST_READING_SECONDS = 10.0


@dataclass(frozen=True)
class CascadeRow:
    """One cascade: a dataset version and the model version trained on it (None: not yet)."""

    dataset: str
    dataset_version: str
    uploaded: datetime | None
    rows: int
    model: str
    version: int | None
    stage: str  # one of STAGES
    failed: bool  # failed at `stage`
    detail: str


def render() -> None:
    st.title("Loop")
    st.fragment(run_every=stack_view().refresh_seconds)(_live)()


def _live() -> None:
    """The whole page, redrawn every `refresh_seconds` from the feeds' latest readings."""
    health, delivery, events = _stack_feeds()
    _services(health.latest(_FIRST_READING_SECONDS))
    _delivery(delivery.latest(_FIRST_READING_SECONDS) if delivery is not None else None)
    try:
        cascades = _cascades_feed(signed_in_token())
    except CascadeError as error:  # nobody signed in to a stack that requires it
        st.subheader("Cascades")
        st.error(f"Following the cascades: {error}")
    else:
        _cascades(cascades.latest(_FIRST_READING_SECONDS))
    _events(events.latest(_FIRST_READING_SECONDS) if events is not None else None)


ServiceHealth = tuple[str, str, str, str]  # service, address, health, why


@st.cache_resource(show_spinner=False)
def _stack_feeds() -> tuple[
    Feed[list[ServiceHealth]], Feed[DeliveryStatus] | None, Feed[list[RecentEvent]] | None
]:
    """The reads that need no principal: one feed each per console process (None without Kafka)."""
    view = stack_view()
    every = view.refresh_seconds
    health = Feed("health", lambda: _read_health(view.addresses), every=every)
    if not view.kafka_bootstrap:
        return health, None, None
    bootstrap, prefix, options = view.kafka_bootstrap, view.topic_prefix, view.kafka_options
    delivery = Feed("delivery", lambda: asyncio.run(delivery_status(bootstrap, prefix, options)), every=every)
    events = Feed(
        "events",
        lambda: asyncio.run(recent_events(bootstrap, prefix, options, limit=EVENTS_SHOWN)),
        every=every,
    )
    return health, delivery, events


@st.cache_resource(show_spinner=False, max_entries=32)
def _cascades_feed(token: str) -> Feed[list[CascadeRow]]:
    """The cascades as one principal may read them: a feed per signed-in token."""
    cascade = client_of(token)
    return Feed("cascades", lambda: cascade.call(_follow_cascades), every=stack_view().refresh_seconds)


def _as_of(reading: Reading[Any]) -> str:
    return datetime.fromtimestamp(reading.read_at).strftime("%H:%M:%S")


# ---------------------------------------------------------------------- services


def _read_health(addresses: Mapping[str, str]) -> list[ServiceHealth]:
    security = stack_view().tls
    named = [(name, addresses.get(name, "")) for name in SERVICES]

    def health(address: str) -> tuple[str, str]:
        if not address:
            return "UNKNOWN", "no address configured"
        return probe(address, timeout=_HEALTH_TIMEOUT, security=security)

    with ThreadPoolExecutor(max_workers=len(named)) as pool:
        answers = list(pool.map(health, [address for _, address in named]))
    return [(name, address, state, why) for (name, address), (state, why) in zip(named, answers, strict=True)]


def _services(reading: Reading[list[ServiceHealth]] | None) -> None:
    st.subheader("Services")
    if reading is None or reading.value is None:
        st.warning(f"health unknown: {reading.error if reading else 'no answer yet'}")
        return
    table = pd.DataFrame(
        [
            {"SERVICE": name, "ADDRESS": address or NONE, "HEALTH": state, "WHY": markdown_literal(why)}
            for name, address, state, why in reading.value
        ]
    )
    st.table(table, hide_index=True)
    st.caption(f"As of {_as_of(reading)}.")


# ---------------------------------------------------------------------- Kafka


def _delivery(reading: Reading[DeliveryStatus] | None) -> None:
    st.subheader("Delivery")
    if reading is None:
        st.info("lag unknown: the console was given no Kafka bootstrap address.")
        return
    if reading.error:  # Kafka down or refusing us: a line, not a traceback
        st.warning(
            f"lag unknown: {reading.error}" + (f" (showing {_as_of(reading)}'s)" if reading.value else "")
        )
    status = reading.value
    if status is None:
        return
    rows = [
        {
            "SERVICE": service or "?",
            "TOPIC": topic,
            "LAG": str(status.lag.get(service, {}).get(topic, NONE)),
            "DEAD LETTERS": status.dead_letters.get(service, {}).get(topic, 0),
        }
        for service in sorted(set(status.lag) | set(status.dead_letters))
        for topic in sorted(set(status.lag.get(service, {})) | set(status.dead_letters.get(service, {})))
    ]
    if not rows:
        st.caption("No consumer groups or dead letters yet.")
        return
    st.table(pd.DataFrame(rows), hide_index=True)
    dead = sum(count for topics in status.dead_letters.values() for count in topics.values())
    if dead:
        st.caption(
            f"{dead} dead letters: `cascade dlq list` shows them, `cascade dlq replay` sends them back."
        )
    st.caption(f"As of {_as_of(reading)}.")


def _events(reading: Reading[list[RecentEvent]] | None) -> None:
    st.subheader("Recent events")
    if reading is None:
        st.info("No Kafka bootstrap address: events unknown.")
        return
    if reading.error:
        st.warning(f"events unknown: {reading.error}")
    events = reading.value
    if events is None:
        return
    if not events:
        st.caption("No events yet: upload a batch (`cascade ingest`) to start a cascade.")
        return
    table = pd.DataFrame(
        [
            {
                "TIME": event.time.strftime("%Y-%m-%d %H:%M:%S"),
                "EVENT": event.type,
                "SUBJECT": markdown_literal(event.subject),
                "SUMMARY": markdown_literal(event.summary),
            }
            for event in events
        ]
    )
    st.table(table, hide_index=True)


# ---------------------------------------------------------------------- cascades


def _cascades(reading: Reading[list[CascadeRow]] | None) -> None:
    st.subheader("Cascades")
    if reading is None:
        st.error("Following the cascades: no answer yet")
        return
    if reading.error:
        st.error(f"Following the cascades: {reading.error}")
    rows = reading.value
    if rows is None:
        return
    if not rows:
        st.caption("No data uploaded yet: `cascade ingest FILE --dataset NAME` starts a cascade.")
        return
    in_flight = sum(1 for row in rows if not row.failed and row.stage not in ("serving", "validated"))
    st.caption(
        f"The newest {len(rows)} cascades, {in_flight} in flight, as of {_as_of(reading)}; each at its "
        "stage: " + " → ".join(STAGES)
    )
    table = pd.DataFrame(
        [
            {
                "DATASET": markdown_literal(row.dataset),
                "DATA VERSION": row.dataset_version[:12],
                "UPLOADED": row.uploaded.strftime("%Y-%m-%d %H:%M:%S") if row.uploaded else "",
                "ROWS": row.rows,
                "MODEL": markdown_literal(row.model) if row.model else NONE,
                "VERSION": f"v{row.version}" if row.version is not None else NONE,
                "STAGE": f"failed at {row.stage}" if row.failed else row.stage,
                "PROGRESS": _progress(row),
                "DETAIL": markdown_literal(row.detail),
            }
            for row in rows
        ]
    )
    st.table(table, hide_index=True)


def _progress(row: CascadeRow) -> str:
    """`✓ uploaded → ✓ trained → ✗ validated → · promoted → · serving`."""
    reached = STAGES.index(row.stage)
    marks = []
    for number, stage in enumerate(STAGES):
        mark = "✓" if number < reached or (number == reached and not row.failed) else "✗"
        marks.append(f"{mark if number <= reached else '·'} {stage}")
    return " → ".join(marks)


async def _follow_cascades(client: AsyncClient) -> list[CascadeRow]:
    """The newest dataset versions and what became of each: a handful of calls, made together."""
    datasets = await client.ingest.list_datasets()
    listed = await asyncio.gather(*(client.ingest.list_dataset_versions(d.dataset) for d in datasets))
    newest = sorted(
        (version for versions in listed for version in versions),
        key=lambda version: version.created_at.timestamp() if version.created_at else 0.0,
        reverse=True,
    )[:NEWEST_DATASET_VERSIONS]
    trained = await asyncio.gather(
        *(client.registry.search_versions(dataset_version=version.version) for version in newest)
    )
    names = sorted({model_version.model for versions in trained for model_version in versions})
    models = {
        model.name: model
        for model in await asyncio.gather(*(_model(client, name) for name in names))
        if model is not None
    }
    rows: list[CascadeRow] = []
    for data, versions in zip(newest, trained, strict=True):
        if not versions:
            rows.append(_row(data, None, "uploaded", False, "waiting for the trainer"))
        for model_version in versions:
            rows.append(await _judge(client, data, model_version, models.get(model_version.model)))
    return rows


async def _model(client: AsyncClient, name: str) -> Model | None:
    try:
        return await client.registry.get_model(name)
    except CascadeError:
        return None


async def _judge(
    client: AsyncClient, data: DatasetVersion, version: ModelVersion, model: Model | None
) -> CascadeRow:
    """The stage a model version has reached, and why it stopped there."""
    if version.status is VersionStatus.failed:
        failed = "; ".join(gate.describe() for gate in version.failed_gates)
        return _row(data, version, "validated", True, failed or "failed validation")
    if version.status is not VersionStatus.ready:
        return _row(data, version, "trained", False, "waiting for the validator")
    champion = model.aliases.get("champion") if model is not None else None
    if "champion" not in version.aliases:
        other = [alias for alias in version.aliases]
        why = f"not champion (champion is v{champion})" if champion else "not promoted"
        return _row(
            data, version, "validated", False, why + (f"; aliases {', '.join(other)}" if other else "")
        )
    try:
        ready = await client.serving.model_ready(version.model, str(version.version))
    except CascadeError:
        ready = False
    if ready:
        return _row(data, version, "serving", False, "champion, answering predictions")
    return _row(data, version, "promoted", False, "champion, waiting for serving to load it")


def _row(
    data: DatasetVersion, version: ModelVersion | None, stage: str, failed: bool, detail: str
) -> CascadeRow:
    return CascadeRow(
        dataset=data.dataset,
        dataset_version=data.version,
        uploaded=data.created_at,
        rows=data.rows,
        model=version.model if version is not None else "",
        version=version.version if version is not None else None,
        stage=stage,
        failed=failed,
        detail=detail,
    )
