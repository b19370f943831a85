"""Wires the registry together: store, artifacts, domain core, Kafka and gRPC transports."""

from __future__ import annotations

import asyncio

import grpc

from cascade.client.channels import ClientSecurity
from cascade.client.ingest import IngestClient
from cascade.events import Event, Topics
from cascade.messaging import build_broker, publish_event
from cascade.service import Service
from cascade.services.registry import kafka_api
from cascade.services.registry.artifacts import open_artifact_store
from cascade.services.registry.core import Lineage, RegistryCore
from cascade.services.registry.grpc_api import ROLES, SERVICE_NAME, RegistryServicer
from cascade.services.registry.notifications import ConsoleLinks, DeliveryPolicy, Destinations, Notifier
from cascade.services.registry.permissions import Permissions
from cascade.services.registry.settings import RegistrySettings
from cascade.services.registry.store import RegistryStore, sqlite_url
from cascade.services.registry.webhooks import WebhookSender
from cascade.stubs.cascade.registry.v1 import registry_pb2_grpc


def build(settings: RegistrySettings | None = None) -> Service:
    settings = settings or RegistrySettings()
    topics = Topics(settings.topic_prefix, settings.topic_partitions, settings.topic_replication_factor)
    broker = build_broker(settings, "registry")
    store = RegistryStore(settings.database_url or sqlite_url(settings.data_dir / "registry.sqlite3"))
    artifacts = open_artifact_store(settings.artifact_url, settings.data_dir, settings)

    async def publish(event: Event) -> None:
        await publish_event(broker, topics, event)

    webhooks = WebhookSender(
        [url.strip() for url in settings.webhook_urls.split(",") if url.strip()],
        settings.webhook_secret_file.read_text().strip()
        if settings.webhook_secret_file
        else settings.webhook_secret.get_secret_value(),
    )
    core = RegistryCore(
        store,
        artifacts,
        publish,
        settings.promotion_policy,
        webhooks,
        settings.default_rollout_plan.plan(),
        settings.outbox_lease_seconds,
    )
    notifier = Notifier(
        store,
        Destinations(settings.notifications_file),  # a broken file stops the start, saying why
        ConsoleLinks(settings.console_url, settings.console_url_file),
        DeliveryPolicy(
            timeout_seconds=settings.notification_timeout_seconds,
            max_attempts=settings.notification_max_attempts,
            budget_seconds=settings.notification_budget_seconds,
            backoff_seconds=settings.notification_backoff_seconds,
            backoff_max_seconds=settings.notification_backoff_max_seconds,
        ),
        dead_letter_threshold=settings.dead_letter_threshold,
        dead_letter_window_seconds=settings.dead_letter_window_seconds,
    )
    relay: list[asyncio.Task[None]] = []

    async def start_relay() -> None:
        relay.append(asyncio.create_task(core.relay(max_webhook_attempts=settings.webhook_max_attempts)))
        relay.append(asyncio.create_task(notifier.run()))

    kafka_api.register(broker, core, topics, notifier, (settings.max_message_bytes, settings.max_json_depth))
    ingest = IngestClient.connect(settings.ingest_address, ClientSecurity.of(settings))
    lineage = Lineage(core, ingest)
    servicer = RegistryServicer(
        core,
        lineage,
        settings.data_dir / "spool",
        settings.max_artifact_bytes,
        Permissions(store, settings.default_permission),
    )

    def add_servicer(server: grpc.aio.Server) -> None:
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)

    async def close_store() -> None:
        for task in relay:
            task.cancel()
        await asyncio.gather(*relay, return_exceptions=True)  # the relays let their leases go
        await ingest.close()
        store.close()

    return Service(
        name="registry",
        settings=settings,
        broker=broker,
        grpc_registrars=[add_servicer],
        grpc_service_names=[SERVICE_NAME],
        grpc_roles=ROLES,
        on_start=[start_relay],
        on_stop=[close_store],
    )
