"""The console's Models page: every model and its aliases; one model's versions, with their metrics,
gate verdicts and lineage; two versions side by side; the alias history; a version awaiting approval
(manual promotion policy), approved or rejected here; and the registry's writes (promote, roll back,
set or delete an alias), each behind a confirmation and a reason.

The model shown is the `model` query parameter (/models?model=NAME), so a link opens it. Writes go
through the registry alone: the page shows its answer, or its refusal, as it is.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from cascade.client.records import AliasMove, Approval, Model, ModelVersion
from cascade.client.sdk import AsyncClient
from cascade.console.connection import listing_with, run, show_error, signed_in_token
from cascade.console.tables import NONE, markdown_literal
from cascade.console.views import attribution, traffic
from cascade.errors import CascadeError

LATENCY_GATE = "latency_p99_ms"
# Recorded as the actor when the stack does not authenticate; with auth, the registry records the
# signed-in principal instead.
ACTOR = "console"
_MESSAGE_KEY = "models_page_message"
_APPROVAL_MESSAGE_KEY = "models_page_approval_message"
# Closed approvals shown under a pending one: the latest decisions, enough to see who decided what.
_RECENT_DECISIONS = 5
_TTL = 5


def render() -> None:
    st.title("Models")
    try:
        models = listing_with(
            _models, signed_in_token(), lambda pair: pair[0].name, st.query_params.get("model", "")
        )
    except CascadeError as error:
        show_error(error, "Listing the models")
        return
    if not models:
        st.info("No models yet: a model appears when its first version is trained (`cascade ingest`).")
        return
    _overview(models)
    model = _chosen(models)
    try:
        versions, history = _model_details(signed_in_token(), model.name)
    except CascadeError as error:
        show_error(error, f"Reading {model.name}")
        return
    _versions(model, versions)
    _approval(model)
    traffic.render_model(model, versions, _forget_reads)
    attribution.render_version(versions, model.name)
    _compare(model, versions)
    _actions(model, versions)
    _history(model, history)


# ---------------------------------------------------------------------- reads (cached briefly)


@st.cache_data(ttl=_TTL, show_spinner=False)
def _models(token: str) -> list[tuple[Model, ModelVersion | None]]:
    """Every model with its latest version (the calls made together, not one after another)."""
    del token  # part of the cache key only: what a user may read depends on who they are

    async def read(client: AsyncClient) -> list[tuple[Model, ModelVersion | None]]:
        models = await client.registry.list_models()

        async def latest(model: Model) -> ModelVersion | None:
            if not model.latest_version:
                return None
            try:
                return await client.registry.get_version(model.name, model.latest_version)
            except CascadeError:
                return None

        return list(zip(models, await asyncio.gather(*(latest(m) for m in models)), strict=True))

    return run(read)


@st.cache_data(ttl=_TTL, show_spinner=False)
def _model_details(token: str, model: str) -> tuple[list[ModelVersion], list[AliasMove]]:
    del token

    async def read(client: AsyncClient) -> tuple[list[ModelVersion], list[AliasMove]]:
        versions, history = await asyncio.gather(
            client.registry.list_versions(model), client.registry.alias_history(model)
        )
        return versions, history

    return run(read)


@st.cache_data(ttl=_TTL, show_spinner=False)
def _approvals(token: str, model: str) -> list[Approval]:
    del token
    return run(lambda client: client.registry.list_approvals(model))


def _forget_reads() -> None:
    _models.clear()
    _model_details.clear()
    _approvals.clear()


# ---------------------------------------------------------------------- the models


def _overview(models: list[tuple[Model, ModelVersion | None]]) -> None:
    st.subheader("All models")
    rows = [
        {
            "MODEL": markdown_literal(model.name),
            "CHAMPION": _version_name(model.aliases.get("champion")),
            "CHALLENGER": _version_name(model.aliases.get("challenger")),
            "LATEST": _version_name(model.latest_version or None),
            "LATEST STATUS": latest.status.value if latest is not None else NONE,
            "POLICY": model.promotion_policy,
        }
        for model, latest in models
    ]
    st.table(pd.DataFrame(rows), hide_index=True)


def _chosen(models: list[tuple[Model, ModelVersion | None]]) -> Model:
    """The model named by ?model=, else the first; choosing another updates the query parameter."""
    names = [model.name for model, _ in models]
    asked = st.query_params.get("model", "")
    if asked and asked not in names:
        st.warning(f"No model named {asked!r}; showing {names[0]}.")
    index = names.index(asked) if asked in names else 0
    name = st.selectbox("Model", names, index=index, key=f"model_choice_{asked}")
    if name != asked:
        st.query_params["model"] = name
    return next(model for model, _ in models if model.name == name)


def _version_name(version: int | None) -> str:
    return f"v{version}" if version else NONE


# ---------------------------------------------------------------------- one model's versions


def _versions(model: Model, versions: list[ModelVersion]) -> None:
    st.subheader(f"Versions of {model.name}")
    aliases = ", ".join(f"{alias} → v{version}" for alias, version in sorted(model.aliases.items()))
    st.caption(f"{len(versions)} versions; aliases: {aliases or 'none'}; promotion: {model.promotion_policy}")
    rows = [
        {
            "VERSION": version.version,
            "STATUS": version.status.value,
            "ALIASES": ", ".join(version.aliases),
            "METRICS": _pairs(version.run.metrics),
            "GATES": "; ".join(
                _gate(gate.name, gate.passed, gate.value, gate.threshold) for gate in version.gates
            ),
            "TRIALS": _trials(version),
            "SIZE": _size(version.artifact_size),
            "LATENCY P99 MS": _latency(version),
            "CREATED": version.created_at.strftime("%Y-%m-%d %H:%M:%S") if version.created_at else "",
            "DATASET VERSION": version.dataset_version[:12],
        }
        for version in reversed(versions)
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True)


def _pairs(values: dict[str, float]) -> str:
    return ", ".join(f"{name}={value:.4g}" for name, value in sorted(values.items()))


def _gate(name: str, passed: bool, value: float | None, threshold: float | None) -> str:
    """`✓ min_accuracy: 0.97 vs 0.7`; a gate that measures nothing (schema) is its name alone."""
    mark = "✓" if passed else "✗"
    if value is None and threshold is None:
        return f"{mark} {name}"
    measured = f"{value:.4g}" if value is not None else NONE
    limit = f" vs {threshold:.4g}" if threshold is not None else ""
    return f"{mark} {name}: {measured}{limit}"


def _trials(version: ModelVersion) -> str:
    """How many hyperparameter trials the trainer ran (its `trials` tag holds each one, as JSON)."""
    recorded = version.tags.get("trials")
    if recorded is None:
        return version.run.params.get("max_trials", "")
    try:
        trials = json.loads(recorded)
    except ValueError:
        return "?"
    return str(len(trials)) if isinstance(trials, list) else "?"


def _latency(version: ModelVersion) -> str:
    gate = next((gate for gate in version.gates if gate.name == LATENCY_GATE), None)
    return f"{gate.value:.3g}" if gate is not None and gate.value is not None else ""


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / (1024 * 1024):.1f} MB"


def _compare(model: Model, versions: list[ModelVersion]) -> None:
    st.subheader("Compare two versions")
    if len(versions) < 2:
        st.caption("One version only: nothing to compare yet.")
        return
    numbers = [version.version for version in reversed(versions)]
    left, right = st.columns(2)
    first = left.selectbox("Version A", numbers, index=1, key=f"compare_a_{model.name}")
    second = right.selectbox("Version B", numbers, index=0, key=f"compare_b_{model.name}")
    by_number = {version.version: version for version in versions}
    chosen = [by_number[first], by_number[second]]
    rows: dict[str, list[str]] = {
        "status": [v.status.value for v in chosen],
        "aliases": [", ".join(v.aliases) for v in chosen],
        "dataset version": [v.dataset_version[:12] for v in chosen],
        "size": [_size(v.artifact_size) for v in chosen],
    }
    for name in sorted({metric for v in chosen for metric in v.run.metrics}):
        rows[f"metric {name}"] = [_number(v.run.metrics.get(name)) for v in chosen]
    for name in sorted({param for v in chosen for param in v.run.params}):
        rows[f"param {name}"] = [markdown_literal(_short(v.run.params.get(name, ""))) for v in chosen]
    for name in dict.fromkeys(gate.name for v in chosen for gate in v.gates):
        rows[f"gate {name}"] = [
            next((_gate(g.name, g.passed, g.value, g.threshold) for g in v.gates if g.name == name), NONE)
            for v in chosen
        ]
    table = pd.DataFrame(rows, index=[f"v{first}", f"v{second}"]).T
    st.table(table)


def _number(value: float | None) -> str:
    return f"{value:.4g}" if value is not None else NONE


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------- writes


def _show_message(key: str = _MESSAGE_KEY) -> None:
    """The answer to the last write, kept across the rerun that shows its effect."""
    message = st.session_state.pop(key, None)
    if message is not None:
        kind, text = message
        (st.success if kind == "ok" else st.error)(text)


def _write(
    doing: str, call: Callable[[AsyncClient], Any], answer: Callable[[Any], str], key: str = _MESSAGE_KEY
) -> None:
    """Make one registry write; keep its answer (or its refusal) for the rerun that follows."""
    try:
        result = run(call)
    except CascadeError as error:
        st.session_state[key] = ("error", f"{doing} refused: {error}")
    else:
        st.session_state[key] = ("ok", answer(result))
    _forget_reads()
    st.rerun()


def _confirmed(reason: str, confirmed: bool) -> bool:
    if not reason.strip():
        st.error("Give a reason: the registry keeps it in the alias history.")
        return False
    if not confirmed:
        st.error("Tick the confirmation box first.")
        return False
    return True


def _approval(model: Model) -> None:
    """A version awaiting approval, with approve and reject (a reason and a confirmation each), and
    the latest decisions; nothing for a model that never had an approval."""
    try:
        found = _approvals(signed_in_token(), model.name)
    except CascadeError as error:
        show_error(error, f"Reading the approvals of {model.name}")
        return
    if not found and model.promotion_policy != "manual":
        return
    st.subheader("Approval")
    _show_message(_APPROVAL_MESSAGE_KEY)
    pending = [approval for approval in found if approval.status == "pending"]
    if not pending:
        st.caption("No version is awaiting approval.")
    for approval in pending:
        _pending_approval(model.name, approval)
    decided = [approval for approval in found if approval.status != "pending"][:_RECENT_DECISIONS]
    if decided:
        rows = [
            {
                "VERSION": _version_name(approval.version),
                "DECISION": approval.status,
                "DECIDED BY": markdown_literal(approval.decided_by),
                "REASON": markdown_literal(approval.reason),
                "AT": approval.decided_at.strftime("%Y-%m-%d %H:%M:%S") if approval.decided_at else "",
            }
            for approval in decided
        ]
        st.table(pd.DataFrame(rows), hide_index=True)


def _pending_approval(name: str, approval: Approval) -> None:
    number = approval.version
    champion = _version_name(approval.champion_version or None)
    requested = approval.requested_at.strftime("%Y-%m-%d %H:%M:%S") if approval.requested_at else ""
    st.warning(
        f"v{number} is awaiting approval: it passed validation and is challenger (champion: {champion}). "
        f"Requested by {approval.requested_by} at {requested} UTC."
    )
    with st.form(f"approval_{name}_{number}", clear_on_submit=True):
        st.markdown(f"**Approve or reject v{number}**")
        reason = st.text_input("Reason for the decision")
        confirmed = st.checkbox("I confirm the decision")
        approve, reject = st.columns(2)
        approve_clicked = approve.form_submit_button(f"Approve v{number}")
        reject_clicked = reject.form_submit_button(f"Reject v{number}")
        if (approve_clicked or reject_clicked) and _confirmed(reason, confirmed):
            why = reason.strip()
            if approve_clicked:
                _write(
                    f"Approving v{number}",
                    lambda c: c.registry.approve_version(name, number, reason=why, actor=ACTOR),
                    lambda done: f"{name} v{done.version} approved by {done.decided_by}: now champion",
                    _APPROVAL_MESSAGE_KEY,
                )
            else:
                _write(
                    f"Rejecting v{number}",
                    lambda c: c.registry.reject_version(name, number, reason=why, actor=ACTOR),
                    lambda done: f"{name} v{done.version} rejected by {done.decided_by}: the champion stays",
                    _APPROVAL_MESSAGE_KEY,
                )


def _actions(model: Model, versions: list[ModelVersion]) -> None:
    st.subheader("Change aliases")
    _show_message()
    name = model.name
    latest = max((v.version for v in versions), default=1)
    promote, roll_back, alias = st.columns(3)
    # Cleared on submit: a ticked confirmation never carries over to the next write.
    with promote.form(f"promote_{name}", clear_on_submit=True):
        st.markdown("**Promote a version**")
        version = st.number_input("Version to promote", min_value=1, value=latest, step=1)
        target = st.text_input("Alias", value="champion")
        reason = st.text_input("Reason for the promotion")
        confirmed = st.checkbox("I confirm the promotion")
        if st.form_submit_button("Promote") and _confirmed(reason, confirmed):
            chosen, alias_name = int(version), target.strip()
            _write(
                f"Promoting v{chosen} to {alias_name}",
                lambda c: c.registry.set_alias(name, alias_name, chosen, actor=ACTOR, reason=reason.strip()),
                lambda moved: f"{name}@{alias_name} → v{moved.version}",
            )
    with roll_back.form(f"rollback_{name}", clear_on_submit=True):
        st.markdown("**Roll back the champion**")
        now = _version_name(model.aliases.get("champion"))
        st.caption(f"Moves champion back to the version it pointed at before (now {now}).")
        reason = st.text_input("Reason for the rollback")
        confirmed = st.checkbox("I confirm the rollback")
        if st.form_submit_button("Roll back") and _confirmed(reason, confirmed):
            _write(
                "Rolling back",
                lambda c: c.registry.rollback(name, actor=ACTOR, reason=reason.strip()),
                lambda back: f"{name}@champion rolled back → v{back.version}",
            )
    with alias.form(f"alias_{name}", clear_on_submit=True):
        st.markdown("**Set or delete an alias**")
        alias_name = st.text_input("Alias name", value="challenger")
        version = st.number_input("Version for the alias", min_value=1, value=latest, step=1)
        reason = st.text_input("Reason for the alias change")
        confirmed = st.checkbox("I confirm the alias change")
        set_it, delete_it = st.columns(2)
        set_clicked = set_it.form_submit_button("Set alias")
        delete_clicked = delete_it.form_submit_button("Delete alias")
        if (set_clicked or delete_clicked) and _confirmed(reason, confirmed):
            chosen, label = int(version), alias_name.strip()
            if set_clicked:
                _write(
                    f"Setting {label}",
                    lambda c: c.registry.set_alias(name, label, chosen, actor=ACTOR, reason=reason.strip()),
                    lambda moved: f"{name}@{label} → v{moved.version}",
                )
            else:
                _write(
                    f"Deleting {label}",
                    lambda c: c.registry.delete_alias(name, label, actor=ACTOR, reason=reason.strip()),
                    lambda previous: f"{name}@{label} deleted (it pointed at v{previous})",
                )


def _history(model: Model, history: list[AliasMove]) -> None:
    st.subheader("Alias history")
    if not history:
        st.caption("No alias has moved yet.")
        return
    rows = [
        {
            "ALIAS": move.alias,
            "FROM": _version_name(move.from_version),
            "TO": _version_name(move.to_version),
            "ACTOR": markdown_literal(move.actor),
            "REASON": markdown_literal(move.reason),
            "AT": move.at.strftime("%Y-%m-%d %H:%M:%S") if move.at else "",
        }
        for move in reversed(history)
    ]
    st.table(pd.DataFrame(rows), hide_index=True)
