"""How fast the web console's pages render with a model of 300 versions and a dataset of 100.

    flock /tmp/cascade-heavy.lock .venv/bin/python bench/bench_console.py --loads 5

Starts its own stack (ports 37xxx, home bench/.work/console) and seeds it through the SDK:
- dataset `bench_console`: breast_cancer uploaded as 100 batches of distinct rows (170 rows, then
  99 slices of about 4), so 100 dataset versions. The trainer trains model `bench_console` as
  usual, skipping the versions that are already stale when it gets to them, so only a few
  trainings run; the seeding waits until one of them is champion and served.
- model `bench_console_300`: 300 versions registered with `registry.create_version`, each the
  bench_console champion's real ONNX artifact with its real tags (features, trials, importances,
  parity reference: what the trainer records) and lineage. Nothing validates them, so they stay
  pending, as the registry sets them; v300 is made champion (serving loads it).

Then it serves the console (`cascade ui`'s command) and, as baseline, a bare Streamlit app with
one heading from a second Streamlit process, and times each page in Debian's chromium driven by
Playwright: from `page.goto` until the page's heading is shown and Streamlit reports the script
run finished (`data-testid="stApp"` carries `data-test-script-state="notRunning"`; the running
indicator `stStatusWidget` then fades out over 200 ms, which is not counted, for any page). One
warm-up load per page (its time is printed as "first"), then LOADS loads; each load is a fresh
navigation, so a fresh Streamlit session whose script runs in full, with the server's caches
(st.cache_data) as a user meets them a moment after someone else opened the page.

Then, apart from the browser, each page's script alone (Streamlit's AppTest in a child process,
`render()` of the page module with the same query): the median of LOADS runs with warm caches and
of LOADS runs after `st.cache_data.clear()`, i.e. what the server spends when a page's cached reads
have expired.

Prints per page: first load, median and p90 ms, the ratio to the bare page's median, whether the
median is within 1 s, and the script-run times. `--serve` seeds, then keeps the stack and the
console running (for a look at the pages) until interrupted; `--profile PAGE`, against a stack
--serve left running, times each read one cold-cache run of PAGE makes, by the function making it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
from sklearn.datasets import load_breast_cancer

from cascade.client.sdk import AsyncClient, Client
from cascade.stack import SERVICES, Stack, StackConfig
from cascade.stack.launcher import console_command, console_env

REPO = Path(__file__).resolve().parents[1]
HOME = REPO / "bench" / ".work" / "console"
PORTS = {
    "ingest": 27051,
    "trainer": 27052,
    "validator": 27053,
    "registry": 27054,
    "monitor": 27055,
    "serving": 27001,
}
KAFKA_PORT, CONTROLLER_PORT = 27092, 27093
CONSOLE_PORT, BARE_PORT = 27501, 27502
DATASET = "bench_console"  # the trainer names the model after it
MODEL = "bench_console_300"
DATASET_VERSIONS = 100
MODEL_VERSIONS = 300
FIRST_BATCH_ROWS = 170
BARE_APP = 'import streamlit as st\n\nst.title("Bare")\n'


@dataclass(frozen=True)
class Target:
    """A page to time: its path (with query) and the heading that shows it rendered."""

    name: str
    path: str
    heading: str


def targets() -> list[Target]:
    return [
        Target("loop", "", "Loop"),  # the front page, at /
        Target("models", f"models?model={MODEL}", "Models"),
        Target("lineage", f"lineage?model={MODEL}&version={MODEL_VERSIONS}", "Lineage"),
        Target("datasets", f"datasets?dataset={DATASET}", "Datasets"),
        Target("drift", f"drift?model={MODEL}", "Drift"),
        Target("traces", "traces", "Traces"),
        Target("playground", f"playground?model={MODEL}", "Playground"),
    ]


# -- seeding -----------------------------------------------------------------------------------------
def seed(stack: Stack) -> None:
    addresses = {name: stack.address(name) for name in SERVICES}
    with Client(addresses, security=stack.client_security, timeout=120.0) as client:
        started = time.perf_counter()
        last_version = seed_dataset(client)
        print(f"  {DATASET_VERSIONS} dataset versions in {time.perf_counter() - started:.1f} s", flush=True)
        champion = client.follow(last_version, DATASET, wait_seconds=600)
        print(f"  {DATASET} v{champion.version} is champion and served", flush=True)
        started = time.perf_counter()
        client.call(lambda c: seed_model(c, DATASET, champion.version))
        print(f"  {MODEL_VERSIONS} versions of {MODEL} in {time.perf_counter() - started:.1f} s", flush=True)
        deadline = time.monotonic() + 120
        while not client.call(lambda c: c.serving.model_ready(MODEL, str(MODEL_VERSIONS))):
            if time.monotonic() > deadline:
                raise SystemExit(f"serving did not load {MODEL} v{MODEL_VERSIONS}")
            time.sleep(0.5)
        print(f"  {MODEL} v{MODEL_VERSIONS} is champion and served", flush=True)


def seed_dataset(client: Client) -> str:
    """100 uploads of distinct rows: each makes a version. The last version's id."""
    frame = load_breast_cancer(as_frame=True).frame.sample(frac=1.0, random_state=7).reset_index(drop=True)
    edges = np.linspace(FIRST_BATCH_ROWS, len(frame), DATASET_VERSIONS).astype(int)
    slices = [frame.iloc[:FIRST_BATCH_ROWS]] + [frame.iloc[a:b] for a, b in itertools.pairwise(edges)]
    assert len(slices) == DATASET_VERSIONS
    last = ""
    for batch in slices:
        upload = client.upload(batch, DATASET)
        if not upload.created or upload.report.rows_accepted == 0:
            raise SystemExit(f"a batch of {len(batch)} rows made no new version: {upload.report}")
        last = upload.dataset_version
    return last


async def seed_model(c: AsyncClient, source: str, version: int) -> None:
    """MODEL_VERSIONS versions carrying the trained version's artifact, tags and lineage."""
    trained = await c.registry.get_version(source, version)
    artifact = await c.registry.download_artifact(source, version)
    await c.registry.register_model(MODEL, description="300 versions for the console benchmark")
    for number in range(1, MODEL_VERSIONS + 1):
        await c.registry.create_version(
            MODEL,
            artifact,
            dataset=trained.dataset,
            dataset_version=trained.dataset_version,
            run=trained.run,
            tags=trained.tags,
            description=f"benchmark copy {number} of {source} v{version}",
        )
    await c.registry.set_alias(MODEL, "champion", MODEL_VERSIONS, reason="console benchmark")


# -- Streamlit servers -------------------------------------------------------------------------------
def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def streamlit_server(command: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[str]:
    """A Streamlit server on `port` until the block ends; its base URL."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as output:
        process = subprocess.Popen(
            command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while not _port_open(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"streamlit did not start on {port}:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def bare_command(port: int) -> list[str]:
    """The console's own Streamlit command line and options, running the one-heading app instead."""
    app = HOME / "bare_app.py"
    app.write_text(BARE_APP)
    command = console_command("127.0.0.1", port, HOME)
    script = next(index for index, part in enumerate(command) if part.endswith(".py"))
    command[script] = str(app)
    return command


# -- timing ------------------------------------------------------------------------------------------
RENDERED = """heading => {
    const app = document.querySelector("[data-testid='stApp']");
    if (!app || app.getAttribute("data-test-script-state") !== "notRunning") return false;
    return [...document.querySelectorAll("h1")].some(h => h.textContent.trim() === heading);
}"""


@dataclass(frozen=True)
class Timing:
    name: str
    first_ms: float
    loads_ms: list[float]
    error: str  # Streamlit's exception box or an error message on the page, if any

    @property
    def median(self) -> float:
        return statistics.median(self.loads_ms)

    @property
    def p90(self) -> float:
        ordered = sorted(self.loads_ms)
        return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def time_page(page: object, url: str, target: Target, loads: int) -> Timing:
    from playwright.sync_api import Page

    assert isinstance(page, Page)

    def load() -> float:
        started = time.perf_counter()
        page.goto(url, wait_until="commit")
        page.wait_for_function(RENDERED, arg=target.heading, polling="raf", timeout=120_000)
        elapsed = (time.perf_counter() - started) * 1000
        page.locator("[data-testid='stStatusWidget']").wait_for(state="detached", timeout=30_000)
        return elapsed

    first = load()
    timed = [load() for _ in range(loads)]
    problems = page.locator("[data-testid='stException'], [data-testid='stAlertContentError']")
    error = problems.first.inner_text()[:300] if problems.count() else ""
    if page.get_by_text("Not built yet").count():
        error = "a placeholder (Not built yet)"
    return Timing(target.name, first, timed, error)


@dataclass(frozen=True)
class ScriptRun:
    """The page's script alone, in-process (Streamlit's AppTest, no browser): warm and cold cache."""

    warm_ms: float
    cold_ms: float


def script_runs(targets: list[Target], loads: int) -> dict[str, ScriptRun]:
    """Each page's `render()` run by AppTest: the median of LOADS runs with the caches as they are
    after a first run (warm), and of LOADS runs after `st.cache_data.clear()` (cold): what the
    server spends, apart from the browser and the websocket."""
    import streamlit as st
    from streamlit.logger import set_log_level
    from streamlit.testing.v1 import AppTest

    set_log_level("error")
    os.environ.update(console_env(HOME))
    runs: dict[str, ScriptRun] = {}
    for target in targets:
        script = HOME / f"script_{target.name}.py"
        script.write_text(f"from cascade.console.views import {target.name}\n\n{target.name}.render()\n")
        app = AppTest.from_file(str(script), default_timeout=120)
        for key, value in parse_qsl(urlsplit(target.path).query):
            app.query_params[key] = value

        def timed(clear: bool, app: AppTest = app) -> float:
            if clear:
                st.cache_data.clear()
            started = time.perf_counter()
            app.run()
            return (time.perf_counter() - started) * 1000

        timed(clear=False)  # imports, the client's channels
        warm = statistics.median(timed(clear=False) for _ in range(loads))
        cold = statistics.median(timed(clear=True) for _ in range(loads))
        runs[target.name] = ScriptRun(warm, cold)
    return runs


def profile_page(target: Target) -> None:
    """Which reads one cold-cache run of a page's script waits for: every `connection.run` call
    (the one way a page reaches the stack), timed, by the page function that made it."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from cascade.console import connection

    calls: list[tuple[str, float]] = []
    original = connection.run

    def timed_run(calls_made: Any) -> Any:
        caller = sys._getframe(1).f_code
        started = time.perf_counter()
        try:
            return original(calls_made)
        finally:
            calls.append(
                (f"{caller.co_name} ({Path(caller.co_filename).name})", time.perf_counter() - started)
            )

    connection.run = timed_run  # type: ignore[assignment]  # before the page module is imported: it binds `run` by name
    os.environ.update(console_env(HOME))
    script = HOME / f"script_{target.name}.py"
    script.write_text(f"from cascade.console.views import {target.name}\n\n{target.name}.render()\n")
    app = AppTest.from_file(str(script), default_timeout=120)
    for key, value in parse_qsl(urlsplit(target.path).query):
        app.query_params[key] = value
    app.run()
    st.cache_data.clear()
    calls.clear()
    started = time.perf_counter()
    app.run()
    total = time.perf_counter() - started
    print(f"{target.name}: one cold-cache script run {total * 1000:.0f} ms; its reads of the stack:")
    waited: dict[str, list[float]] = {}
    for caller, seconds in calls:
        waited.setdefault(caller, []).append(seconds)
    for caller, times in sorted(waited.items(), key=lambda item: -sum(item[1])):
        print(f"  {sum(times) * 1000:8.0f} ms  {len(times):4d} call(s)  {caller}")


def script_runs_apart(loads: int) -> dict[str, ScriptRun]:
    """`script_runs` in a child process: Streamlit's bare-mode warnings go to its log, and this
    process never imports the console's pages."""
    log = HOME / "logs" / "script-runs.log"
    with log.open("ab") as errors:
        child = subprocess.run(
            [sys.executable, __file__, "--script-runs", str(loads)],
            stdout=subprocess.PIPE,
            stderr=errors,
            check=False,
        )
    if child.returncode != 0:
        raise SystemExit(f"timing the script runs failed (see {log})")
    runs = {name: ScriptRun(**run) for name, run in json.loads(child.stdout).items()}
    for name, run in runs.items():
        print(f"  {name}: script run {run.warm_ms:.0f} ms warm, {run.cold_ms:.0f} ms cold cache", flush=True)
    return runs


def run_browser(console: str, bare: str, loads: int) -> tuple[Timing, list[Timing]]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            baseline = time_page(page, bare, Target("bare", "", "Bare"), loads)
            print(f"  bare page: median {baseline.median:.0f} ms", flush=True)
            timings = []
            for target in targets():
                timing = time_page(page, console + target.path, target, loads)
                print(f"  {target.name}: median {timing.median:.0f} ms", flush=True)
                timings.append(timing)
            # The bare page again, after the console's pages: the baseline did not drift meanwhile.
            again = time_page(page, bare, Target("bare", "", "Bare"), loads)
            print(f"  bare page again: median {again.median:.0f} ms", flush=True)
            merged = Timing("bare", baseline.first_ms, baseline.loads_ms + again.loads_ms, "")
            return merged, timings
        finally:
            browser.close()


def report(baseline: Timing, timings: list[Timing], runs: dict[str, ScriptRun]) -> None:
    print()
    print(
        "| page | first load (ms) | median (ms) | p90 (ms) | x bare | over bare (ms) | within 1 s "
        "| script run, warm (ms) | script run, cold cache (ms) | note |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| bare Streamlit page | {baseline.first_ms:.0f} | {baseline.median:.0f} | {baseline.p90:.0f} "
        "| 1.0x | 0 | - | | | |"
    )
    for timing in timings:
        within = "yes" if timing.median <= 1000 else "no"
        note = timing.error.replace("\n", " ").replace("|", "/")
        run = runs.get(timing.name)
        server = f"{run.warm_ms:.0f} | {run.cold_ms:.0f}" if run else "- | -"
        print(
            f"| {timing.name} | {timing.first_ms:.0f} | {timing.median:.0f} | {timing.p90:.0f} | "
            f"{timing.median / baseline.median:.1f}x | {timing.median - baseline.median:.0f} | {within} | "
            f"{server} | {note} |"
        )


# -- main --------------------------------------------------------------------------------------------
def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=5, help="timed loads per page, after one warm-up")
    parser.add_argument("--serve", action="store_true", help="seed, then serve the console until interrupted")
    parser.add_argument(
        "--profile",
        choices=[t.name for t in targets()],
        help="against a stack left by --serve: cProfile one cold-cache script run of a page",
    )
    parser.add_argument("--script-runs", type=int, default=0, help=argparse.SUPPRESS)  # the child's part
    args = parser.parse_args()
    if args.profile:
        profile_page(next(t for t in targets() if t.name == args.profile))
        return
    if args.script_runs:
        runs = script_runs(targets(), args.script_runs)
        print(json.dumps({name: asdict(run) for name, run in runs.items()}))
        return
    signal.signal(signal.SIGTERM, _stop_on_sigterm)

    taken = [port for port in (*PORTS.values(), KAFKA_PORT, CONSOLE_PORT, BARE_PORT) if _port_open(port)]
    if taken:  # another run of this bench (--serve?) owns HOME: wiping it would orphan its processes
        raise SystemExit(f"ports {taken} are in use: another bench_console run is going on; stop it first")
    shutil.rmtree(HOME, ignore_errors=True)
    stack = Stack(
        StackConfig(
            home=HOME,
            kafka_port=KAFKA_PORT,
            controller_port=CONTROLLER_PORT,
            topic_prefix="benchconsole",
            ports=PORTS,
            metrics_ports={},  # no /metrics: keeps clear of a `cascade up` stack on this machine
        ),
        environ={k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CASCADE_"))},
    )
    try:
        print("starting the stack ...", flush=True)
        stack.start(timeout=180)
        print("seeding ...", flush=True)
        seed(stack)
        console = stack.start_console(CONSOLE_PORT)
        if args.serve:
            print(f"console: {console}  (Ctrl-C or SIGTERM stops everything)", flush=True)
            while True:
                time.sleep(3600)
        bare_log = HOME / "logs" / "bare.log"
        with streamlit_server(bare_command(BARE_PORT), console_env(HOME), BARE_PORT, bare_log) as bare:
            print(f"timing ... (load average {' '.join(f'{v:.1f}' for v in os.getloadavg())})", flush=True)
            baseline, timings = run_browser(console, bare, args.loads)
        print("script runs (AppTest) ...", flush=True)
        runs = script_runs_apart(args.loads)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return
    finally:
        stack.stop()
    report(baseline, timings, runs)
    print(f"\nload average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
