"""The `cascade` command: run a local Cascade stack, feed it data and watch models follow.

Commands only parse options, call `cascade.stack` / `cascade.client` and print; known
failures become one-line messages and exit code 1, never tracebacks.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from cascade.cli.auth import auth_app
from cascade.cli.certs import certs_app
from cascade.cli.console import ui as ui_command
from cascade.cli.datasets import datasets_app
from cascade.cli.dlq import dlq_app
from cascade.cli.errors import EXIT_CODES_HELP, EXIT_FAILURE, EXIT_USAGE, CliError, failure_of
from cascade.cli.explain import explain as explain_command
from cascade.cli.models import models_app
from cascade.cli.monitor import monitor as monitor_command
from cascade.cli.train import spec_app, train
from cascade.errors import CascadeError
from cascade.stack import (
    SERVICES,
    ServiceStatus,
    Stack,
    StackConfig,
    StackError,
    default_home,
    remembered_config,
)
from cascade.stack.kafka_broker import BrokerError
from cascade.stack.launcher import CONSOLE, DEFAULT_CONSOLE_PORT, HOME_DIR_NAME

if TYPE_CHECKING:
    # The client pulls in the whole gRPC runtime; commands import it only when they need it,
    # which keeps `cascade --help` and `cascade status` quick.
    from cascade.cli.client import FileFormat, IngestResult
    from cascade.client.delivery import DeliveryStatus

__all__ = ["app"]

app = typer.Typer(
    name="cascade",
    help="Cascade keeps a model correct while its data changes: new data is ingested, a model "
    "trained, validated, registered and served, each step by its own service, cascading over Kafka "
    "and gRPC. This command runs such a stack on this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    # Markdown joins the wrapped lines of a docstring paragraph; the default keeps the breaks.
    rich_markup_mode="markdown",
    epilog=EXIT_CODES_HELP,
)
kafka_app = typer.Typer(
    help="The local Kafka (KRaft) the services talk through, kept in HOME/kafka: one broker, or a "
    "cluster of several (`cascade kafka start --brokers 3`).",
    no_args_is_help=True,
)
app.add_typer(kafka_app, name="kafka")
app.add_typer(datasets_app, name="datasets")
app.add_typer(models_app, name="models")
app.add_typer(spec_app, name="spec")
app.add_typer(dlq_app, name="dlq")
app.add_typer(auth_app, name="auth")
app.add_typer(certs_app, name="certs")
app.command()(train)
app.command("monitor")(monitor_command)
app.command("explain")(explain_command)
app.command("ui")(ui_command)


# ---------------------------------------------------------------------- shared plumbing


@app.callback()
def main(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(
            envvar="CASCADE_HOME",
            help="Directory holding the stack's data, logs, pids and traces [default: the nearest "
            ".cascade in this directory or a parent, else the home the last `cascade up` started a "
            "stack in (recorded in $XDG_STATE_HOME/cascade/home), else $XDG_DATA_HOME/cascade, i.e. "
            "~/.local/share/cascade].",
            show_default=False,
        ),
    ] = None,
    kafka_port: Annotated[
        int, typer.Option(envvar="CASCADE_KAFKA_PORT", help="Kafka client port (the bootstrap address).")
    ] = 9092,
    controller_port: Annotated[
        int, typer.Option(envvar="CASCADE_KAFKA_CONTROLLER_PORT", help="Kafka KRaft controller port.")
    ] = 9093,
    kafka_brokers: Annotated[
        int,
        typer.Option(
            envvar="CASCADE_KAFKA_BROKERS",
            min=1,
            help="Kafka brokers: 1, or 3 for a cluster that keeps three copies of every topic.",
        ),
    ] = 1,
) -> None:
    if home is None:
        home = home_for(Path.cwd(), os.environ)
    # A stack started from this home (by `cascade up` or from Python) remembers its ports.
    ctx.obj = remembered_config(home) or StackConfig(
        home=home, kafka_port=kafka_port, controller_port=controller_port, kafka_brokers=kafka_brokers
    )


def home_for(cwd: Path, environ: Mapping[str, str]) -> Path:
    """The home of a command given none: the nearest `.cascade` in `cwd` or a parent (a stack of
    that checkout); else the home the last `cascade up` or `cascade demo` started a stack in, while
    it still holds one (so `cascade status` from any directory finds a stack started inside a
    checkout); else `cascade` under the user's data directory."""
    found = default_home(cwd, environ)
    if found.name == HOME_DIR_NAME:
        return found
    try:
        recorded = Path(_home_record(environ).read_text().strip())
    except OSError:
        return found
    return recorded if (recorded / "run" / "stack.json").is_file() else found


def record_home(home: Path, environ: Mapping[str, str]) -> None:
    """Remember the home a stack was started in, for commands run where no `.cascade` is found.
    A record that cannot be written costs only that convenience, so it never fails the start."""
    record = _home_record(environ)
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        partial = record.with_suffix(".tmp")
        partial.write_text(f"{home.expanduser().resolve()}\n")
        partial.replace(record)
    except OSError as error:
        typer.secho(
            f"(could not record the stack's home in {record}: {error})", err=True, fg=typer.colors.YELLOW
        )


def _home_record(environ: Mapping[str, str]) -> Path:
    """$XDG_STATE_HOME/cascade/home (~/.local/state/cascade/home): state of this user, not data."""
    state = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME", "~")) / ".local" / "state")
    return Path(state).expanduser() / "cascade" / "home"


def _stack(ctx: typer.Context) -> Stack:
    config: StackConfig = ctx.obj
    return Stack(config, on_progress=_progress)


def _progress(message: str) -> None:
    typer.echo(message, err=True)


def _fail(message: str, exit_code: int = EXIT_FAILURE) -> NoReturn:
    typer.secho(f"Error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(exit_code)


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    """Turn the failures a user can act on into a message; anything else is a bug and shows."""
    try:
        yield
    except CliError as error:
        _fail(str(error), error.exit_code)
    except CascadeError as error:
        failure = failure_of(error)
        _fail(str(failure), failure.exit_code)
    except (StackError, BrokerError) as error:
        _fail(str(error))
    except KeyboardInterrupt:
        _fail("interrupted; services already started keep running (`cascade down` stops them)")


# ---------------------------------------------------------------------- kafka


@kafka_app.command("install")
def kafka_install(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option(help="Show Maven's output.")] = False,
) -> None:
    """Fetch the Kafka broker jars with Maven into HOME/kafka/libs (once; a no-op afterwards)."""
    from cascade.stack import KAFKA_POM, kafka_broker

    stack = _stack(ctx)
    with friendly_errors():
        if not stack.kafka.libs_dir.is_dir():
            _progress("Fetching the Kafka jars with Maven")
        libs = kafka_broker.install(stack.kafka, pom=KAFKA_POM, quiet=not verbose)
    typer.echo(f"Kafka jars in {libs}")


@kafka_app.command("start")
def kafka_start(
    ctx: typer.Context,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the brokers to be ready.")] = 90.0,
    brokers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Brokers to run (default: what this home ran before, else 1). With 3, a KRaft cluster "
            "of three broker+controller nodes on KAFKA_PORT, +2, +4 (controllers on CONTROLLER_PORT, "
            "+2, +4); topics keep 3 copies and a write needs 2 (min.insync.replicas).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Start the broker(s) (installing them first if needed) and wait until they accept clients."""
    config: StackConfig = ctx.obj
    if brokers is not None:
        ctx.obj = replace(config, kafka_brokers=brokers)
    stack = _stack(ctx)
    with friendly_errors():
        stack.start_kafka(timeout)
    for node in stack.kafka.nodes:
        typer.echo(f"Kafka node {node.node_id}: bootstrap {node.bootstrap}, logs in {node.logs_dir}")
    typer.echo(f"Kafka running: bootstrap {stack.kafka.bootstrap}")


@kafka_app.command("stop")
def kafka_stop(
    ctx: typer.Context,
    timeout: Annotated[float, typer.Option(help="Seconds to wait after SIGTERM before SIGKILL.")] = 30.0,
) -> None:
    """Stop the broker of this home (services lose Kafka and report NOT_SERVING)."""
    from cascade.stack import kafka_broker

    stack = _stack(ctx)
    with friendly_errors():
        was_running = kafka_broker.stop_cluster(stack.kafka, timeout=timeout)
    typer.echo("Kafka stopped" if was_running else "Kafka was not running")


@kafka_app.command("status")
def kafka_status(ctx: typer.Context) -> None:
    """Show whether each broker of this home runs and accepts clients."""
    from cascade.stack import kafka_broker

    cluster = _stack(ctx).kafka
    for node in cluster.nodes:
        broker = kafka_broker.status(node)
        name = "Kafka" if cluster.brokers == 1 else f"Kafka node {broker.node_id}"
        if not broker.running:
            typer.echo(f"{name} is not running (bootstrap would be {broker.bootstrap})")
            continue
        state = "ready" if broker.ready else "starting (not accepting clients yet)"
        typer.echo(f"{name} is {state}: pid {broker.pid}, bootstrap {broker.bootstrap}")


# ---------------------------------------------------------------------- the stack


@app.command()
def up(
    ctx: typer.Context,
    services: Annotated[
        list[str] | None,
        typer.Argument(
            help=f"Services to start (default: all of {', '.join(SERVICES)}).", show_default=False
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for everything to be SERVING.")] = 120.0,
    tls: Annotated[
        bool | None,
        typer.Option(
            "--tls/--no-tls",
            help="Serve every gRPC hop over TLS, with a local CA and certificates made in HOME/tls.",
            show_default=False,
        ),
    ] = None,
    mtls: Annotated[
        bool | None,
        typer.Option(
            "--mtls/--no-mtls",
            help="TLS, and services accept only callers with a certificate from that CA.",
            show_default=False,
        ),
    ] = None,
    auth: Annotated[
        bool | None,
        typer.Option(
            "--auth/--no-auth",
            help="Every service requires a token (or client certificate) whose principal holds the "
            "call's role. The CLI uses the admin token in HOME/secrets either way.",
            show_default=False,
        ),
    ] = None,
    kafka_security: Annotated[
        bool | None,
        typer.Option(
            "--kafka-security/--no-kafka-security",
            help="Kafka listens on SASL_SSL only (TLS with the local CA, SCRAM-SHA-512 with a password "
            "made in HOME/secrets) and every service and the CLI connect so. A new home only: Kafka "
            "creates the SCRAM user when it first formats its store.",
            show_default=False,
        ),
    ] = None,
    console: Annotated[
        bool, typer.Option("--console/--no-console", help="Also start the web console (`cascade ui`).")
    ] = True,
    console_port: Annotated[int, typer.Option(help="Port of the web console.")] = DEFAULT_CONSOLE_PORT,
) -> None:
    """Start Kafka and the services and wait until all report SERVING; then the web console.

    Each service runs detached, logging to HOME/logs/SERVICE.log; one already running is left
    alone. The console runs detached too (HOME/logs/console.log) on --console-port, unless
    --no-console. `cascade down` stops them. A stack binds to loopback; --tls, --mtls and --auth
    secure it, and a restart keeps what the last start chose unless told otherwise.
    """
    config: StackConfig = ctx.obj
    chosen = replace(
        config,
        tls=config.tls if tls is None else tls,
        mtls=config.mtls if mtls is None else mtls,
        auth=config.auth if auth is None else auth,
        kafka_security=config.kafka_security if kafka_security is None else kafka_security,
    )
    security = (chosen.tls, chosen.mtls, chosen.auth, chosen.kafka_security)
    if security != (config.tls, config.mtls, config.auth, config.kafka_security):
        running = [row.name for row in Stack(config).status() if row.pid is not None]
        if running:
            _fail(
                f"the stack in {config.home} runs with other security settings ({', '.join(running)} "
                "up): `cascade down` first",
                EXIT_USAGE,
            )
        ctx.obj = chosen
    stack = _stack(ctx)
    with friendly_errors():
        stack.start(services or SERVICES, timeout=timeout)
    record_home(stack.home, os.environ)
    url = start_console(stack, console_port) if console else None
    _print_table([*stack.status(), stack.console_status()])
    if url is not None:
        typer.echo(f"Console: {url}")
    typer.echo("`cascade down` stops the stack.")


def start_console(stack: Stack, port: int) -> str | None:
    """The console's URL once it answers; a missing Streamlit or a taken port is one line, and
    the stack runs on without a console."""
    try:
        return stack.start_console(port)
    except StackError as error:
        typer.secho(f"Console not started: {error}", err=True, fg=typer.colors.YELLOW)
        return None


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show Kafka, every service and the web console: pid, endpoint (the console's URL) and health
    (SERVING, NOT_SERVING or DOWN; the console is SERVING when its web server answers); then,
    while Kafka is up, each service's consumer lag per topic and its dead letters (`cascade dlq`)."""
    stack = _stack(ctx)
    rows = [*stack.status(), stack.console_status()]
    delivery = _delivery(stack, rows)
    if as_json:
        # One row per process, as ever; a service's row adds its lag and dead letters per topic
        # (null while Kafka is down).
        typer.echo(json.dumps([_json_row(row, delivery) for row in rows], indent=2))
        return
    _print_table(rows)
    if delivery is not None:
        _print_delivery(delivery)


def _json_row(row: ServiceStatus, delivery: DeliveryStatus | None) -> dict[str, object]:
    if row.name.startswith("kafka") or row.name == CONSOLE:
        return asdict(row)
    return {
        **asdict(row),
        "lag": delivery.lag.get(row.name, {}) if delivery is not None else None,
        "dead_letters": delivery.dead_letters.get(row.name, {}) if delivery is not None else None,
    }


def _delivery(stack: Stack, rows: list[ServiceStatus]) -> DeliveryStatus | None:
    """Lag and dead letters from Kafka, or None while it is down (status never fails for that)."""
    import asyncio

    from cascade.client.delivery import delivery_status

    if not any(row.name.startswith("kafka") and row.health == "SERVING" for row in rows):
        return None
    try:
        kafka_options = stack.kafka_client_options()
        return asyncio.run(delivery_status(stack.address("kafka"), stack.config.topic_prefix, kafka_options))
    except Exception as error:
        typer.secho(f"(lag and dead letters unknown: {error!r})", err=True, fg=typer.colors.YELLOW)
        return None


def _print_delivery(delivery: DeliveryStatus) -> None:
    typer.echo(f"\n{'SERVICE':<10} {'TOPIC':<34} {'LAG':>8} {'DEAD LETTERS':>13}")
    services = sorted(set(delivery.lag) | set(delivery.dead_letters))
    for service in services:
        lag, dead = delivery.lag.get(service, {}), delivery.dead_letters.get(service, {})
        for topic in sorted(set(lag) | set(dead)):
            behind = str(lag[topic]) if topic in lag else "-"
            typer.echo(f"{service or '?':<10} {topic:<34} {behind:>8} {dead.get(topic, 0):>13}")
    if not services:
        typer.echo("(no consumer groups or dead letters yet)")


@app.command()
def down(
    ctx: typer.Context,
    timeout: Annotated[float, typer.Option(help="Seconds each service may drain before SIGKILL.")] = 20.0,
) -> None:
    """Stop every service and then Kafka; the data stays in HOME.

    Services get SIGTERM and drain their in-flight work; any still running after the timeout
    gets SIGKILL.
    """
    stack = _stack(ctx)
    with friendly_errors():
        stack.stop(timeout=timeout)
    typer.echo(f"Stack in {stack.home} stopped.")


def _print_table(rows: list[ServiceStatus]) -> None:
    typer.echo(f"{'NAME':<10} {'PID':>8}  {'ENDPOINT':<22} HEALTH")
    for row in rows:
        pid = str(row.pid) if row.pid is not None else "-"
        colour = typer.colors.GREEN if row.health == "SERVING" else typer.colors.YELLOW
        health = typer.style(row.health, fg=colour if row.health != "DOWN" else typer.colors.RED)
        typer.echo(f"{row.name:<10} {pid:>8}  {row.endpoint:<22} {health}")


# ---------------------------------------------------------------------- data


@app.command()
def ingest(
    ctx: typer.Context,
    *,
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, readable=True, help="The batch: a CSV or Parquet file."),
    ],
    dataset: Annotated[str, typer.Option(help="Dataset the batch belongs to.")],
    target: Annotated[str, typer.Option(help="Name of the target (label) column.")] = "target",
    file_format: Annotated[
        str | None,
        typer.Option(
            "--format", help="csv or parquet; by default taken from the file's suffix.", show_default=False
        ),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="Follow the cascade the batch starts to its end: the model served (version, how long "
            "it took), or the stage it failed at and why, with a non-zero exit code.",
        ),
    ] = False,
    model: Annotated[
        str | None,
        typer.Option(
            help="With --follow, the model to follow [default: the dataset's name, the model its data "
            "trains].",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="With --follow, seconds to wait for the outcome.")] = 300.0,
    address: Annotated[
        str | None, typer.Option(help="Ingest's gRPC address (default: this stack's).", show_default=False)
    ] = None,
) -> None:
    """Upload a batch file to ingest and print its report.

    A new dataset version starts a cascade: training, validation, registration and serving of a
    new model version, all in the trace whose id is printed; `--follow` waits for its outcome.
    """
    import asyncio
    import time

    from cascade.cli.client import ingest_file, setup_cli_tracing
    from cascade.cli.follow import Deadline, follow_upload, outcome_lines

    stack = _stack(ctx)
    started, started_ms = time.monotonic(), int(time.time() * 1000)
    with friendly_errors():
        chosen = _parse_format(file_format)
        setup_cli_tracing(stack)
        result = ingest_file(
            address or stack.address("ingest"), file, dataset, target, chosen, stack.client_security
        )
    _print_ingest(result)
    if not result.created:
        if follow:
            typer.echo("No new dataset version, so no cascade to follow.")
        return
    if not follow:
        typer.echo(
            "The cascade is under way: `cascade models show "
            f"{model or dataset}` tells its outcome (`--follow` waits for it)."
        )
        return
    followed = model or dataset
    typer.echo(f"Following {followed} (at most {timeout:g} s):")
    with friendly_errors():
        outcome = asyncio.run(
            follow_upload(stack, followed, result.dataset_version, started_ms, Deadline(timeout), typer.echo)
        )
    for line in outcome_lines(followed, outcome, time.monotonic() - started):
        typer.echo(line)


def _parse_format(value: str | None) -> FileFormat | None:
    from cascade.cli.client import FileFormat

    if value is None:
        return None
    try:
        return FileFormat(value.lower())
    except ValueError:
        _fail(f"--format must be csv or parquet, not {value!r}")


def _print_ingest(result: IngestResult) -> None:
    state = "new dataset version" if result.created else "already ingested before: nothing changed"
    typer.echo(f"Ingested {result.source} into dataset {result.dataset!r}")
    typer.echo(
        f"  rows: {result.rows_received} received, {result.rows_accepted} accepted, "
        f"{result.rows_rejected} rejected, {result.rows_duplicate} duplicate"
    )
    for row, reason in result.rejected[:5]:
        typer.echo(f"    row {row} rejected: {reason}")
    typer.echo(f"  dataset version: {result.dataset_version or '-'} ({state})")
    if result.event_pending:
        typer.echo("  event pending: Kafka has not taken its data-arrived event yet; ingest sends it later")
    typer.echo(f"  batch id: {result.batch_id}")
    typer.echo(f"  trace id: {result.trace_id}")


# ---------------------------------------------------------------------- traces


@app.command()
def trace(
    ctx: typer.Context,
    trace_id: Annotated[
        str | None, typer.Argument(help="Trace id, or its first digits; without it, list the latest traces.")
    ] = None,
    source: Annotated[
        Path | None,
        typer.Option("--file", help="An OTLP-JSON span file or a directory of them [default: HOME/traces]."),
    ] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="List single-service traces too (inference calls, health).")
    ] = False,
) -> None:
    """Print one cascade's trace as a waterfall, from OTLP-JSON span files; no backend needed.

    `cascade up` makes every service write its spans to HOME/traces/<service>.jsonl, and
    `cascade ingest` and `cascade demo` print the trace id of each upload.
    """
    from datetime import UTC, datetime

    from cascade.cli.traces import find_trace, load_spans, recent_traces, waterfall

    config: StackConfig = ctx.obj
    with friendly_errors():
        spans = load_spans(source or config.home / "traces")
        if trace_id is None:
            for found, started, count, services, root in recent_traces(
                spans, min_services=1 if show_all else 2
            ):
                when = datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%d %H:%M:%S")
                typer.echo(f"{found}  {when}  {count:>3} spans  {len(services)} services  {root}")
            return
        for line in waterfall(find_trace(spans, trace_id)):
            typer.echo(line)


# ---------------------------------------------------------------------- demo


@app.command()
def demo(
    ctx: typer.Context,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the stack, and for each new model version to serve.")
    ] = 300.0,
    console: Annotated[
        bool, typer.Option("--console/--no-console", help="Also start the web console (`cascade ui`).")
    ] = True,
    console_port: Annotated[int, typer.Option(help="Port of the web console.")] = DEFAULT_CONSOLE_PORT,
) -> None:
    """Run the whole story: two batches of data in, two served model versions out.

    Starts the stack, ingests 60% of scikit-learn's breast-cancer data, waits for model version 1
    to serve and tries it, then does the same with the other 40% and version 2. The stack keeps
    running afterwards, with the web console to watch it; `cascade down` stops both.
    """
    from cascade.cli.demo import run_demo, summary

    stack = _stack(ctx)
    with friendly_errors():
        outcomes = run_demo(stack, timeout, typer.echo, console_port if console else None)
    record_home(stack.home, os.environ)
    for line in summary(stack, outcomes):
        typer.echo(line)
