"""Several serving processes sharing one gRPC port and one REST port, so that requests use every core.

The kernel spreads incoming connections over the processes (SO_REUSEPORT), for gRPC and REST
alike: a REST request is answered by whichever worker accepted its connection. Each process is a whole
serving service: its own models, its own consumer group (it follows every promotion itself), its
own statistics. The first process starts the others and stops them when it stops; a worker also
dies with it (PR_SET_PDEATHSIG), so none is left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import signal
import sys

from cascade.service import run_main
from cascade.services.serving.app import build
from cascade.services.serving.settings import ServingSettings

__all__ = ["main", "worker_settings"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def worker_settings(settings: ServingSettings, index: int) -> ServingSettings:
    """The settings of worker `index`: its index, and its own /metrics port."""
    metrics_port = settings.metrics_port + index if settings.metrics_port else 0
    return settings.model_copy(update={"worker_index": index, "metrics_port": metrics_port})


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _worker(settings: ServingSettings) -> None:
    _die_with_parent()
    run_main("serving", lambda: build(settings))


def main() -> None:
    settings = ServingSettings()
    if settings.workers == 1:
        run_main("serving", lambda: build(settings))
        return
    if settings.grpc_port == 0:
        raise SystemExit("CASCADE_SERVING_WORKERS > 1 needs a fixed CASCADE_SERVING_GRPC_PORT")
    if settings.http_enabled and settings.http_port == 0:
        raise SystemExit("CASCADE_SERVING_WORKERS > 1 needs a fixed CASCADE_SERVING_HTTP_PORT")
    context = multiprocessing.get_context("spawn")
    others = [
        context.Process(target=_worker, args=(worker_settings(settings, index),), name=f"serving-{index}")
        for index in range(1, settings.workers)
    ]
    for process in others:
        process.start()
    try:
        run_main("serving", lambda: build(worker_settings(settings, 0)))
    finally:
        for process in others:
            process.terminate()  # SIGTERM: each stops gracefully
        for process in others:
            process.join(settings.shutdown_grace_seconds + 5)
            if process.is_alive():
                process.kill()
