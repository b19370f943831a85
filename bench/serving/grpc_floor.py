"""Where a 1-row ModelInfer's CPU goes: the grpc.aio echo (a handler that does nothing), the echo with
the shared interceptors, and Cascade, one server process each, under the same closed-loop load.

    flock /tmp/cascade-heavy.lock .venv/bin/python bench/serving/grpc_floor.py [--rounds 3]

Each server runs alone on its port (run.py's servers and fake registry); the load generator measures
them in turn, point by point, and reads each server process's CPU time (utime + stime from
/proc/PID/stat) and context switches (/proc/PID/status) before and after, so each point gives the
server's CPU microseconds per request, the client's own (this process), and the switches per
request. Cascade runs with batching off and on. The figures are medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from run import (  # bench/serving/run.py, beside this script
    BATCHING_PORTS,
    ECHO_PORT,
    REGISTRY_PORT,
    Registry,
    Server,
    closed_loop,
    infer_request,
    running,
    serve_registry,
    start_cascade,
    start_echo,
    train_models,
    wait_model_ready,
)

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    switches: int


def usage(server: Server) -> Usage:
    """CPU time and context switches (voluntary and not) of the server's processes and their threads."""
    cpu, switches = 0.0, 0
    for process in server.processes:
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu += (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (threads included)
        for task in Path(f"/proc/{process.pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
                status = (task / "status").read_text()
                # voluntary_ctxt_switches and nonvoluntary_ctxt_switches
                switches += sum(
                    int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line
                )
    return Usage(cpu, switches)


@dataclass(frozen=True)
class Sample:
    rate: float
    server_us: float  # server CPU per request
    client_us: float  # load generator CPU per request
    switches: float  # server context switches per request


async def sample(server: Server, port: int, request: bytes, concurrency: int, seconds: float) -> Sample:
    before, client_before, started = usage(server), time.process_time(), time.perf_counter()
    latencies, _, failures, _ = await closed_loop(port, request, concurrency, seconds, warmup=0.0)
    after, client_after, elapsed = usage(server), time.process_time(), time.perf_counter() - started
    assert not failures, f"{failures} requests failed"
    count = len(latencies)
    return Sample(
        count / elapsed,
        (after.cpu_seconds - before.cpu_seconds) / count * 1e6,
        (client_after - client_before) / count * 1e6,
        (after.switches - before.switches) / count,
    )


async def main(args: argparse.Namespace) -> None:
    models = train_models()
    request = infer_request(models.rows[:1])
    registry = await serve_registry(Registry(models.onnx), REGISTRY_PORT)
    results: dict[tuple[str, int], list[Sample]] = {}
    with contextlib.ExitStack() as stack:
        off = stack.enter_context(running(start_cascade(1, 0.01, port=BATCHING_PORTS, batching=False)))
        on = stack.enter_context(running(start_cascade(1, 0.01, port=BATCHING_PORTS + 10, batching=True)))
        await wait_model_ready(BATCHING_PORTS)
        await wait_model_ready(BATCHING_PORTS + 10)
        _, _, _, answer = await closed_loop(BATCHING_PORTS, request, 1, 0.2, warmup=0)
        echo = stack.enter_context(running(start_echo(1, answer[0], port=ECHO_PORT)))
        intercepted = stack.enter_context(
            running(start_echo(1, answer[0], interceptors=True, port=ECHO_PORT + 5))
        )
        servers = [
            ("echo (does nothing)", echo, ECHO_PORT),
            ("echo + shared interceptors", intercepted, ECHO_PORT + 5),
            ("cascade, batching off", off, BATCHING_PORTS),
            ("cascade, batching on", on, BATCHING_PORTS + 10),
        ]
        for round_ in range(args.rounds):
            print(f"round {round_ + 1} of {args.rounds}", flush=True)
            for concurrency in (1, 16):
                for name, server, port in servers:
                    got = await sample(server, port, request, concurrency, args.seconds)
                    results.setdefault((name, concurrency), []).append(got)
                    print(
                        f"  {name:<28} c={concurrency:<3} {got.rate:7.0f} req/s"
                        f"  server {got.server_us:5.0f} us"
                        f"  client {got.client_us:5.0f} us  switches {got.switches:5.1f} per request",
                        flush=True,
                    )
    await registry.stop(None)
    print(
        "\n| server (1 process) | conc. | req/s | server CPU us/request | client CPU us/request | "
        "server context switches/request |"
    )
    print("|---|---|---|---|---|---|")
    for (name, concurrency), samples in results.items():
        print(
            f"| {name} | {concurrency} | {statistics.median(s.rate for s in samples):.0f} | "
            f"{statistics.median(s.server_us for s in samples):.0f} | "
            f"{statistics.median(s.client_us for s in samples):.0f} | "
            f"{statistics.median(s.switches for s in samples):.1f} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
