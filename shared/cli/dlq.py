"""`cascade dlq list | show | replay`: the dead-letter topic, operable. The readers (and the
delivery figures of `cascade status`) live in cascade.client.delivery, which the console shares.

Reads Kafka directly, at the stack's bootstrap and topic prefix: a dead letter carries the original
message's exact bytes, key and headers, plus the `cascade_dlq_*` headers that cascade.messaging adds
(reason, source topic, partition, offset, service, time). A replay puts the bytes back on the
source topic with `cascade_replayed_from` and `cascade_replay_count`; each replay is appended to the
audit log HOME/logs/dlq-replays.log (JSON lines), and a dead letter found there is not replayed
again unless asked (`--again`). A replayed message that fails again is dead-lettered anew with its
replay count, and refused for replay past `MAX_REPLAYS` unless asked.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

import typer

from cascade.cli.errors import CliError
from cascade.client import delivery
from cascade.client.delivery import DeadLetter, DeliveryStatus, delivery_status
from cascade.errors import Unavailable
from cascade.events import Topics
from cascade.messaging import REPLAY_COUNT, REPLAYED_FROM
from cascade.stack import Stack, StackConfig

__all__ = [
    "MAX_REPLAYS",
    "DeadLetter",
    "DeliveryStatus",
    "Replay",
    "delivery_status",
    "dlq_app",
    "read_dead_letters",
    "replay",
]

# A message that failed again after this many replays needs a fix first, not another replay.
MAX_REPLAYS = 3
_TIMEOUT_MS = 10_000
# No SSL or SASL options: an unsecured broker.
_PLAINTEXT: Mapping[str, Any] = MappingProxyType({})

dlq_app = typer.Typer(
    help="The dead-letter topic: messages a service could not handle (malformed, refused, or failing "
    "past their retry budget), with the reason. List them, inspect one, and replay them to their "
    "source topic once the cause is fixed.",
    no_args_is_help=True,
)


@dataclass(frozen=True)
class Replay:
    letter: str  # the dead letter's ref
    topic: str
    replay_count: int
    replayed: bool
    why_not: str = ""


# ---------------------------------------------------------------------- reading and replaying


async def read_dead_letters(
    bootstrap: str, topic: str, kafka_options: Mapping[str, Any] = _PLAINTEXT
) -> list[DeadLetter]:
    """`cascade.client.delivery.read_dead_letters`, failing as a CliError."""
    try:
        return await delivery.read_dead_letters(bootstrap, topic, kafka_options)
    except Unavailable as error:
        raise CliError(str(error)) from error


def _replay_headers(letter: DeadLetter, dead_letter_topic: str) -> list[tuple[str, bytes]]:
    # The original message's own headers (trace context, CloudEvents) go back; the dead-letter
    # ones do not, or the replay would look dead-lettered to the next reader.
    kept = {
        name: value
        for name, value in letter.headers.items()
        if not name.startswith("cascade_dlq_") and name not in (REPLAY_COUNT, REPLAYED_FROM)
    }
    kept[REPLAYED_FROM] = f"{dead_letter_topic}:{letter.ref}"
    kept[REPLAY_COUNT] = str(letter.replay_count + 1)
    return [(name, value.encode()) for name, value in kept.items()]


async def replay(
    bootstrap: str,
    dead_letter_topic: str,
    letters: Iterable[DeadLetter],
    kafka_options: Mapping[str, Any] = _PLAINTEXT,
) -> list[tuple[DeadLetter, str]]:
    """Put each letter back on its source topic; (letter, "topic[partition]@offset") per replay."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap.split(","),
        acks="all",
        enable_idempotence=True,
        request_timeout_ms=_TIMEOUT_MS,
        max_request_size=16 * 1024 * 1024,
        **kafka_options,
    )
    done: list[tuple[DeadLetter, str]] = []
    try:
        await producer.start()
        for letter in letters:
            sent = await producer.send_and_wait(
                letter.source_topic,
                letter.value,
                key=letter.key,
                headers=_replay_headers(letter, dead_letter_topic),
            )
            done.append((letter, f"{sent.topic}[{sent.partition}]@{sent.offset}"))
    except Exception as exc:
        raise CliError(f"replay to Kafka at {bootstrap} failed: {exc!r}") from exc
    finally:
        await producer.stop()
    return done


# ---------------------------------------------------------------------- the commands


def _where(ctx: typer.Context) -> tuple[Stack, str, str]:
    config: StackConfig = ctx.obj
    stack = Stack(config)
    return stack, stack.address("kafka"), Topics(config.topic_prefix).dead_letter


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"Error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def _load(ctx: typer.Context) -> tuple[Stack, str, str, list[DeadLetter]]:
    stack, bootstrap, topic = _where(ctx)
    try:
        letters = asyncio.run(read_dead_letters(bootstrap, topic, stack.kafka_client_options()))
    except CliError as error:
        _fail(str(error))
    return stack, bootstrap, topic, letters


def _find(letters: list[DeadLetter], ref: str) -> DeadLetter:
    """A letter by `PARTITION:OFFSET`, or by OFFSET alone when one partition has it."""
    partition, _, offset = ref.rpartition(":")
    if not offset.isdigit() or (partition and not partition.isdigit()):
        raise CliError(f"{ref!r} is not a dead letter's PARTITION:OFFSET (or OFFSET)")
    found = [
        letter
        for letter in letters
        if letter.offset == int(offset) and (not partition or letter.partition == int(partition))
    ]
    if not found:
        raise CliError(f"no dead letter {ref} (`cascade dlq list` shows them)")
    if len(found) > 1:
        raise CliError(
            f"offset {offset} is in several partitions: say which ({', '.join(f.ref for f in found)})"
        )
    return found[0]


@dlq_app.command("list")
def list_letters(
    ctx: typer.Context,
    topic: Annotated[str | None, typer.Option(help="Only those from this source topic.")] = None,
    service: Annotated[str | None, typer.Option(help="Only those this service dead-lettered.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the dead letters, oldest first: REF (partition:offset in the dead-letter topic), when,
    which service, the source topic[partition]@offset, replays so far, and the reason."""
    _, _, _, letters = _load(ctx)
    chosen = [
        letter
        for letter in letters
        if (topic is None or letter.source_topic == topic) and (service is None or letter.service == service)
    ]
    chosen.sort(key=lambda letter: (letter.time, letter.partition, letter.offset))
    if as_json:
        typer.echo(json.dumps([letter.summary() for letter in chosen], indent=2))
        return
    if not chosen:
        typer.echo("No dead letters.")
        return
    typer.echo(f"{'REF':<8} {'TIME':<25} {'SERVICE':<10} {'SOURCE':<40} {'REPLAYS':>7}  REASON")
    for letter in chosen:
        source = f"{letter.source_topic}[{letter.source_partition}]@{letter.source_offset}"
        reason = letter.reason if len(letter.reason) <= 80 else letter.reason[:77] + "..."
        typer.echo(
            f"{letter.ref:<8} {letter.time:<25} {letter.service:<10} {source:<40} "
            f"{letter.replay_count:>7}  {reason}"
        )


@dlq_app.command("show")
def show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="The dead letter: PARTITION:OFFSET, or OFFSET if unique.")],
    full: Annotated[bool, typer.Option(help="Print the whole body, however long.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (the body as text).")] = False,
) -> None:
    """Show one dead letter: its reason, where it came from, every header, and its body."""
    _, _, _, letters = _load(ctx)
    try:
        letter = _find(letters, ref)
    except CliError as error:
        _fail(str(error))
    body = letter.value.decode("utf-8", "replace")
    shown = (
        body
        if full or len(body) <= 2000
        else body[:2000] + f"... ({len(letter.value)} bytes; --full shows all)"
    )
    if as_json:
        typer.echo(json.dumps({**letter.summary(), "headers": letter.headers, "body": shown}, indent=2))
        return
    for name, value in letter.summary().items():
        typer.echo(f"{name + ':':<18}{value}")
    typer.echo("headers:")
    for name, value in sorted(letter.headers.items()):
        typer.echo(f"  {name}: {value}")
    typer.echo("body:")
    typer.echo(shown)


@dlq_app.command("replay")
def replay_command(
    ctx: typer.Context,
    refs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Dead letters to replay: PARTITION:OFFSET (or OFFSET if unique).", show_default=False
        ),
    ] = None,
    replay_all: Annotated[
        bool, typer.Option("--all", help="Replay every dead letter (see --topic).")
    ] = False,
    topic: Annotated[str | None, typer.Option(help="With --all: only those from this source topic.")] = None,
    again: Annotated[
        bool,
        typer.Option(
            help=f"Replay even one replayed before, or one that failed {MAX_REPLAYS} replays already."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of lines.")] = False,
) -> None:
    """Put dead letters back on their source topic, after the cause is fixed, for their service to
    handle again: the same bytes, key and headers, plus `cascade_replayed_from` and
    `cascade_replay_count`. Each replay is printed and appended to HOME/logs/dlq-replays.log.

    Exit code 0: every chosen dead letter was replayed; 1: an error, or some were skipped (replayed
    before, or failed too often: --again replays them anyway); 2: bad usage.
    """
    if bool(refs) == replay_all:
        _fail("name the dead letters to replay, or give --all (not both)", code=2)
    if topic is not None and not replay_all:
        _fail("--topic goes with --all", code=2)
    stack, bootstrap, dead_letter_topic, letters = _load(ctx)
    try:
        chosen = (
            [letter for letter in letters if topic is None or letter.source_topic == topic]
            if replay_all
            else [_find(letters, ref) for ref in refs or ()]
        )
    except CliError as error:
        _fail(str(error))
    audit_log = stack.home / "logs" / "dlq-replays.log"
    skipped, to_send = _screen(chosen, _replayed_refs(audit_log, dead_letter_topic), again)
    try:
        sent = asyncio.run(replay(bootstrap, dead_letter_topic, to_send, stack.kafka_client_options()))
    except CliError as error:
        _fail(str(error))
    _audit(audit_log, dead_letter_topic, sent)
    outcomes = [
        *skipped,
        *(Replay(letter.ref, letter.source_topic, letter.replay_count + 1, True) for letter, _ in sent),
    ]
    if as_json:
        typer.echo(json.dumps([asdict(outcome) for outcome in outcomes], indent=2))
    else:
        for outcome in outcomes:
            if outcome.replayed:
                typer.echo(
                    f"replayed {dead_letter_topic}:{outcome.letter} to {outcome.topic} "
                    f"(replay {outcome.replay_count})"
                )
            else:
                typer.echo(f"skipped {outcome.letter}: {outcome.why_not}", err=True)
        if not outcomes:
            typer.echo("No dead letters to replay.")
    if skipped:
        raise typer.Exit(1)


def _screen(
    chosen: list[DeadLetter], replayed_before: set[str], again: bool
) -> tuple[list[Replay], list[DeadLetter]]:
    """(the skipped, with why; the letters to replay)."""
    skipped: list[Replay] = []
    to_send: list[DeadLetter] = []
    for letter in chosen:
        why_not = ""
        if not letter.source_topic:
            why_not = "it names no source topic"
        elif not again and letter.ref in replayed_before:
            why_not = "replayed before (--again replays it anyway)"
        elif not again and letter.replay_count >= MAX_REPLAYS:
            why_not = f"failed after {letter.replay_count} replays; fix the cause (--again replays it anyway)"
        if why_not:
            skipped.append(Replay(letter.ref, letter.source_topic, letter.replay_count, False, why_not))
        else:
            to_send.append(letter)
    return skipped, to_send


def _audit(audit_log: Path, dead_letter_topic: str, sent: list[tuple[DeadLetter, str]]) -> None:
    audit_log.parent.mkdir(parents=True, exist_ok=True)
    with audit_log.open("a") as audit:
        for letter, where in sent:
            line = {
                "time": datetime.now(UTC).isoformat(timespec="seconds"),
                "replayed_from": f"{dead_letter_topic}:{letter.ref}",
                "to": where,
                "replay_count": letter.replay_count + 1,
                "service": letter.service,
                "reason": letter.reason[:500],
            }
            audit.write(json.dumps(line) + "\n")


def _replayed_refs(audit_log: Path, dead_letter_topic: str) -> set[str]:
    try:
        lines = audit_log.read_text().splitlines()
    except FileNotFoundError:
        return set()
    refs = set()
    for line in lines:
        try:
            source = str(json.loads(line)["replayed_from"])
        except (ValueError, KeyError, TypeError):
            typer.echo(f"skipping an unreadable line of {audit_log}", err=True)
            continue
        topic, _, ref = source.partition(":")
        if topic == dead_letter_topic:
            refs.add(ref)
    return refs
