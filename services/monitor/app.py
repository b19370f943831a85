"""Wires the monitor together: store, reference source, domain core, Kafka and gRPC transports."""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from cascade.client.channels import ClientSecurity
from cascade.events import DriftDetected, Topics
from cascade.messaging import build_broker, publish_event
from cascade.service import Service
from cascade.services.monitor import kafka_api
from cascade.services.monitor.attribution import AttributionLimits
from cascade.services.monitor.core import DriftPolicy, MonitorCore
from cascade.services.monitor.grpc_api import ROLES, SERVICE_NAME, MonitorServicer
from cascade.services.monitor.loop_clients import GrpcLoopClients
from cascade.services.monitor.references import GrpcReferenceSource
from cascade.services.monitor.rollout import RolloutPolicy
from cascade.services.monitor.settings import MonitorSettings
from cascade.services.monitor.store import MonitorStore
from cascade.stubs.cascade.monitor.v1 import monitor_pb2_grpc

__all__ = ["build"]


def build(settings: MonitorSettings | None = None) -> Service:
    settings = settings or MonitorSettings()
    broker = build_broker(settings, "monitor")
    store = MonitorStore(settings.data_dir, settings.database_url, settings.database_sync_each_commit)
    source = GrpcReferenceSource(
        settings.registry_address,
        settings.ingest_address,
        settings.rpc_timeout_seconds,
        ClientSecurity.of(settings),
    )
    loop_clients = GrpcLoopClients(
        settings.registry_address,
        settings.ingest_address,
        settings.rpc_timeout_seconds,
        ClientSecurity.of(settings),
    )
    topics = Topics(settings.topic_prefix, settings.topic_partitions, settings.topic_replication_factor)

    async def emit(event: DriftDetected) -> None:
        await publish_event(broker, topics, event)

    core = MonitorCore(
        store,
        source,
        window_size=settings.window_size,
        evaluate_every=settings.evaluate_every,
        p_value_threshold=settings.p_value_threshold,
        policy=DriftPolicy(
            feature_tests=settings.feature_tests,
            categorical_features=frozenset(settings.categorical_features),
            thresholds=settings.test_thresholds,
            dataset_drift_share=settings.dataset_drift_share,
            window_seconds=settings.window_seconds,
            trigger_after=settings.trigger_after,
            cooldown_seconds=settings.cooldown_seconds,
            retrain_models=settings.retrain_models,
            decay_threshold=settings.decay_threshold,
            labels_window=settings.labels_window,
            min_labels=settings.min_labels,
            remembered_requests=settings.remembered_requests,
            drift_mode=settings.drift_mode,
            false_alarm_rate=settings.false_alarm_rate,
            calibration_draws=settings.calibration_draws,
            feedback_min_rows=settings.feedback_min_rows,
            feedback_max_rows=settings.feedback_max_rows,
            attribution=AttributionLimits(
                rows=settings.attribution_rows,
                background_rows=settings.attribution_background_rows,
                max_evaluations=settings.attribution_max_evaluations,
                seconds=settings.attribution_seconds,
                features=settings.attribution_features,
            ),
        ),
        emit=emit,
        champion_outputs=loop_clients,
        retrain_data=loop_clients,
        artifacts=loop_clients,
    )

    async def task_of(model: str, model_version: int) -> str:
        return core.known_task(model) or await loop_clients.task(model, model_version)

    rollouts = RolloutPolicy(store, loop_clients, task_of)
    kafka_api.register(broker, core, topics, rollouts, batch_max_records=settings.batch_max_records)
    servicer = MonitorServicer(core, rollouts)
    background: list[asyncio.Task[None]] = []

    async def judge_rollouts() -> None:
        await rollouts.resume()
        while True:
            await asyncio.sleep(settings.rollout_tick_seconds)
            await rollouts.tick()

    async def start_rollouts() -> None:
        background.append(asyncio.create_task(judge_rollouts(), name="rollout-policy"))

    async def stop_rollouts() -> None:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def add_servicer(server: grpc.aio.Server) -> None:
        monitor_pb2_grpc.add_MonitorServiceServicer_to_server(servicer, server)

    async def close_store() -> None:
        store.close()

    return Service(
        name="monitor",
        settings=settings,
        broker=broker,
        grpc_registrars=[add_servicer],
        grpc_service_names=[SERVICE_NAME],
        grpc_roles=ROLES,
        # channels belong to the running event loop
        on_start=[source.open, loop_clients.open, start_rollouts],
        on_stop=[stop_rollouts, source.close, loop_clients.close, close_store],
    )
