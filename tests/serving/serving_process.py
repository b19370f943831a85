"""Runs the real serving service (`build()` + `Service.run`) for the tests, in its own process.

Own process, because tritonclient and Cascade's stubs both register the proto package `inference`
and cannot share one. Kafka is faststream's in-memory TestKafkaBroker, so no broker is needed.

    python serving_process.py --registry HOST:PORT [--sample-rate R] [--http-port H]
                              [--port P --workers N --index I]

Settings not given here come from the environment (CASCADE_SERVING_*). With --workers N, this
process is worker I of N sharing port P (SO_REUSEPORT), as cascade.services.serving.workers runs them;
start one harness per worker.

One line per message:
    stdout  PORT <port> <http port>      the gRPC and REST ports, once the service has started
    stdout  LOGGED <json>                every PredictionLogged event the service publishes
    stdout  LOAD_FAILED <json>           every ModelLoadFailed event the service publishes
    stdout  LIVE <json>                  every LiveTrafficReported event the service publishes
    stdout  COMPARED <json>              every PredictionsCompared event the service publishes
    stdin   promote <model> <version>    publish ModelPromoted, as the validator would; then
    stdout  PROMOTED <model> <version>   once the service has handled it
    stdin   traffic <model> <revision>   publish ModelTrafficChanged, as the registry would; then
    stdout  PROMOTED <model> <revision>  once the service has handled it
Closing stdin stops the service gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from faststream.kafka import KafkaBroker, TestKafkaBroker

from cascade.events import (
    Event,
    LiveTrafficReported,
    ModelLoadFailed,
    ModelPromoted,
    ModelTrafficChanged,
    PredictionLogged,
    PredictionsCompared,
    Topics,
)
from cascade.logs import setup_logging
from cascade.service import event_loop_factory
from cascade.services.serving.app import build_serving
from cascade.services.serving.settings import ServingSettings
from cascade.services.serving.workers import worker_settings


def say(*words: object) -> None:
    print(*words, flush=True)


async def stdin_lines() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def obey(commands: asyncio.StreamReader, broker: KafkaBroker, topics: Topics) -> None:
    while line := (await commands.readline()).decode():
        verb, model, version = line.split()
        assert verb in ("promote", "traffic"), line
        event: Event = ModelPromoted(
            source="tests", subject=model, model=model, model_version=int(version), actor="tests"
        )
        if verb == "traffic":  # the number is the split's revision; serving re-reads the split
            event = ModelTrafficChanged(
                source="tests", subject=model, model=model, revision=int(version), action="set", actor="tests"
            )
        # The in-memory broker raises the handler's error here; a real one would redeliver.
        try:
            await broker.publish(event, topic=topics.for_event(type(event)), key=model.encode())
        except Exception as exc:
            say("PROMOTE_FAILED", model, version, type(exc).__name__)
        else:
            say("PROMOTED", model, version)


async def main(
    registry: str,
    sample_rate: float,
    port: int,
    http_port: int,
    workers: int,
    index: int,
) -> None:
    settings = ServingSettings(
        grpc_port=port,
        http_port=http_port,
        registry_address=registry,
        instance_id="test",
        topic_prefix="test",
        prediction_log_sample_rate=sample_rate,
        shutdown_grace_seconds=1.0,
        workers=workers,
    )
    if workers > 1:
        settings = worker_settings(settings, index)
    service, rest = build_serving(settings)
    assert rest is not None
    assert service.broker is not None
    topics = Topics(settings.topic_prefix)

    @service.broker.subscriber(topics.for_event(PredictionLogged))
    async def on_logged(event: PredictionLogged) -> None:
        say("LOGGED", event.model_dump_json())

    @service.broker.subscriber(topics.for_event(ModelLoadFailed))
    async def on_load_failed(event: ModelLoadFailed) -> None:
        say("LOAD_FAILED", event.model_dump_json())

    @service.broker.subscriber(topics.for_event(LiveTrafficReported))
    async def on_live_traffic(event: LiveTrafficReported) -> None:
        say("LIVE", event.model_dump_json())

    @service.broker.subscriber(topics.for_event(PredictionsCompared))
    async def on_compared(event: PredictionsCompared) -> None:
        say("COMPARED", event.model_dump_json())

    async def announce_port() -> None:
        say("PORT", service.bound_port, rest.port)

    service.on_start = [*service.on_start, announce_port]
    commands = await stdin_lines()
    stop = asyncio.Event()
    async with TestKafkaBroker(service.broker) as broker:
        running = asyncio.create_task(service.run(stop))
        obeying = asyncio.create_task(obey(commands, broker, topics))
        await asyncio.wait({running, obeying}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        obeying.cancel()
        await running  # re-raises if the service failed


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", required=True)
    parser.add_argument("--sample-rate", type=float, default=1.0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--index", type=int, default=0)
    arguments = parser.parse_args()
    setup_logging("serving", "INFO", "text")
    args = arguments
    service = main(args.registry, args.sample_rate, args.port, args.http_port, args.workers, args.index)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:  # the loop run_main gives serving
        runner.run(service)
