"""The one way a page reaches the stack: a blocking `cascade.Client` per signed-in token, kept
for the Streamlit server's life, and the stack's settings.

Pages call `run(lambda cascade: cascade.registry.list_models())`: the lambda gets the SDK's
`AsyncClient` (its typed per-service clients), runs on the client's own event loop, and its
result comes back here. Errors are `cascade.errors.CascadeError`s, shown by `show_error`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import streamlit as st

from cascade.client.channels import ClientSecurity
from cascade.client.sdk import AsyncClient, Client
from cascade.console.settings import ConsoleSettings
from cascade.errors import CascadeError, Unauthenticated

T = TypeVar("T")

SERVICES = ("ingest", "registry", "trainer", "validator", "monitor", "serving")
TOKEN_KEY = "cascade_token"


@dataclass(frozen=True)
class StackView:
    """What the console knows of the stack it shows."""

    addresses: dict[str, str]
    kafka_bootstrap: str
    topic_prefix: str
    kafka_options: dict[str, Any]
    traces_dir: Path | None
    tls: ClientSecurity  # TLS material only: the token is the signed-in user's
    auth_required: bool
    refresh_seconds: float


@st.cache_resource(show_spinner=False)
def stack_view() -> StackView:
    settings = ConsoleSettings()
    addresses: dict[str, str] = {}
    kafka_bootstrap, topic_prefix = settings.kafka_bootstrap, settings.topic_prefix
    kafka_options: dict[str, Any] = {}
    traces_dir = settings.traces_dir
    tls = _tls_only(ClientSecurity.from_env())
    auth_required = False
    if settings.home is not None:
        from cascade.stack import Stack, remembered_config

        config = remembered_config(settings.home.expanduser().resolve())
        if config is not None:
            stack = Stack(config)
            addresses = {name: stack.address(name) for name in SERVICES}
            kafka_bootstrap = kafka_bootstrap or stack.address("kafka")
            topic_prefix = config.topic_prefix
            kafka_options = stack.kafka_client_options()
            traces_dir = traces_dir or stack.home / "traces"
            tls = _tls_only(stack.client_security)
            auth_required = config.auth
    addresses |= settings.addresses
    if settings.auth_required is not None:
        auth_required = settings.auth_required
    return StackView(
        addresses=addresses,
        kafka_bootstrap=kafka_bootstrap,
        topic_prefix=topic_prefix,
        kafka_options=kafka_options,
        traces_dir=traces_dir,
        tls=tls,
        auth_required=auth_required,
        refresh_seconds=settings.refresh_seconds,
    )


def _tls_only(security: ClientSecurity) -> ClientSecurity:
    """TLS material without a token: a console user acts as the principal they sign in as,
    never as the CLI's admin or the environment's CASCADE_TOKEN."""
    return replace(security, token="")


@st.cache_resource(show_spinner=False, max_entries=32)
def _client(token: str) -> Client:
    view = stack_view()
    return Client(view.addresses, security=replace(view.tls, token=token), timeout=15.0)


def client() -> Client:
    """The signed-in user's client (no token while nobody signed in)."""
    return client_of(signed_in_token())


def client_of(token: str) -> Client:
    """The client calling as `token`'s principal, for work outside a page's run (cascade.console.feeds).
    Unauthenticated while nobody signed in to a stack that requires a token: with mTLS the console
    presents the stack's client certificate, whose name would otherwise be taken as the caller's."""
    if stack_view().auth_required and not token:
        raise Unauthenticated("sign in with your token (in the sidebar): this stack requires one")
    return _client(token)


def signed_in_token() -> str:
    return str(st.session_state.get(TOKEN_KEY, ""))


def run(calls: Callable[[AsyncClient], Awaitable[T]]) -> T:
    """Run `calls` with the signed-in user's AsyncClient, blocking; CascadeError on failure."""
    return client().call(calls)


def show_error(error: CascadeError, doing: str) -> None:
    st.error(f"{doing}: {error}")


def listing_with(cached: Any, token: str, named: Callable[[Any], str], wanted: str) -> list[Any]:
    """`cached(token)` (a st.cache_data read of a list), read afresh once if it lacks the item the
    page was asked for: a model made since the list was cached (a notification's link to it, say)
    must show, not the first model with "no model named ..."."""
    listed: list[Any] = cached(token)
    if wanted and wanted not in {named(item) for item in listed}:
        cached.clear()
        listed = cached(token)
    return listed
