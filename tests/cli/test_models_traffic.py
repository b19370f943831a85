"""`cascade models traffic|canary|shadow|rollout|policy progressive` and the SDK's traffic methods
against a real RegistryService over loopback with authentication on: the split as a table and as
JSON, the history with each move's percent, a rollout started from a plan file and rolled back
with its cause, and every refusal with its exit code and a one-line message."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cascade.cli.errors import EXIT_DENIED, EXIT_NOT_FOUND, EXIT_USAGE
from cascade.cli.follow import Challenger, outcome_lines
from cascade.cli.main import app
from cascade.client.calls import RemoteService
from cascade.client.channels import ClientSecurity
from cascade.client.records import RolloutStep
from cascade.client.registry import RegistryClient
from cascade.client.sdk import Client
from cascade.errors import FailedPrecondition
from cascade.events import ModelValidated
from cascade.grpc_io import open_channel
from cascade.security import Authenticator, PrincipalEntry, Principals, hash_token
from tests.cli import test_models
from tests.cli.test_models import Registry, _cascade, _registry
from tests.records import model_version

onnx_model = test_models.onnx_model  # the module's fixture: one small trained classifier

ALICE = "alice-token-0123456789"
BOB = "bob-token-0123456789"
PRINCIPALS = Principals(
    [
        PrincipalEntry("alice", frozenset({"registry:register"}), hash_token(ALICE)),
        PrincipalEntry("bob", frozenset(), hash_token(BOB)),
    ]
)
AS_ALICE = {"CASCADE_TOKEN": ALICE}


async def _passing(registry: Registry, onnx_model: bytes, version: int) -> None:
    """Upload version `version` of bc (as alice) and hand the registry the validator's pass."""
    async with open_channel(registry.address, ClientSecurity(token=ALICE)) as channel:
        client = RegistryClient(RemoteService("registry", channel), timeout=10)
        assert (await client.create_version("bc", onnx_model, dataset="bc")).version == version
    verdict = ModelValidated(
        source="v", subject="bc", model="bc", model_version=version, passed=True, gates=[]
    )
    await registry.core.on_validated(verdict)


@pytest.mark.parametrize("command", ["traffic", "canary", "shadow", "rollout"])
def test_help_renders(command: str) -> None:
    result = CliRunner().invoke(app, ["models", command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


async def test_a_canary_and_a_shadow_set_by_hand_show_in_the_split_and_the_history(
    tmp_path: Path, onnx_model: bytes
) -> None:
    async with _registry(tmp_path, Authenticator(PRINCIPALS, required=True)) as registry:
        await _cascade(registry, "register", "bc", "--policy", "manual", env=AS_ALICE)
        await _passing(registry, onnx_model, 1)
        await _cascade(registry, "approve", "bc", "1", "--reason", "first", env=AS_ALICE)
        for version in (2, 3):
            await _passing(registry, onnx_model, version)
        untouched = await _cascade(registry, "traffic", "bc", env=AS_ALICE)
        assert "champion:  v1 answers 100%" in untouched and "canary:    -" in untouched
        assert "(never changed)" in untouched

        shown = await _cascade(
            registry, "canary", "bc", "2", "--percent", "10", "--reason", "try v2", env=AS_ALICE
        )
        assert "champion:  v1 answers 90%" in shown and "canary:    v2 answers 10%" in shown
        assert "revision:  1" in shown and "by alice" in shown and "try v2" in shown
        both = await _cascade(registry, "shadow", "bc", "3", "--percent", "50", "--json", env=AS_ALICE)
        split = json.loads(both)
        assert (split["canary_version"], split["canary_percent"]) == (2, 10.0)  # the canary stays
        assert (split["shadow_version"], split["shadow_percent"], split["revision"]) == (3, 50.0, 2)
        assert split["rollout"] is None
        read = json.loads(await _cascade(registry, "traffic", "bc", "--json", "--token", BOB))
        assert read == split  # reading needs only read

        history = await _cascade(registry, "history", "bc", env=AS_ALICE)
        assert "2 (10%)" in history and "3 (50%)" in history
        moves = json.loads(await _cascade(registry, "history", "bc", "--json", env=AS_ALICE))["moves"]
        assert [(m["alias"], m["traffic_percent"]) for m in moves[-2:]] == [
            ("canary", 10.0),
            ("shadow", 50.0),
        ]

        off = await _cascade(registry, "canary", "bc", "2", "--percent", "0", env=AS_ALICE)
        assert "canary:    -" in off and "shadow:    v3 scores 50%" in off

        for args, code, said in [
            (["canary", "bc", "1", "--percent", "5"], EXIT_USAGE, "own canary"),
            (["shadow", "bc", "2", "--percent", "150"], EXIT_USAGE, "less than or equal to 100"),
            (["canary", "bc", "9", "--percent", "5"], EXIT_NOT_FOUND, "no version 9"),
            (["traffic", "ghost"], EXIT_NOT_FOUND, "ghost"),
            (["canary", "bc", "2", "--percent", "5", "--token", BOB], EXIT_DENIED, "needs 'manage'"),
        ]:
            refused = await _cascade(registry, *args, code=code, env=AS_ALICE)
            assert said in refused and "Traceback" not in refused, refused
            if code != EXIT_USAGE or "Usage" not in refused:  # a refusal is one line; click's usage is not
                assert len(refused.strip().splitlines()) == 1, refused
        assert registry.core.get_traffic("bc").revision == 3


async def test_a_rollout_from_a_plan_file_is_shown_step_by_step_and_rolled_back_with_its_cause(
    tmp_path: Path, onnx_model: bytes
) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "steps": [
                    {"stage": "shadow", "percent": 100, "min_requests": 50, "min_seconds": 5},
                    {"stage": "canary", "percent": 20, "min_requests": 50},
                ],
                "thresholds": {"max_error_rate": 0.02, "min_compared_rows": 30},
            }
        )
    )
    async with _registry(tmp_path, Authenticator(PRINCIPALS, required=True)) as registry:
        await _cascade(registry, "register", "bc", "--policy", "manual", env=AS_ALICE)
        await _passing(registry, onnx_model, 1)
        await _cascade(registry, "approve", "bc", "1", "--reason", "first", env=AS_ALICE)
        await _passing(registry, onnx_model, 2)
        default = await _cascade(registry, "rollout", "bc", env=AS_ALICE)
        assert "bc's rollout plan (the registry's default):" in default
        assert "0. shadow 100% (at least 200 requests and 10 s)" in default and "3. champion" in default
        assert "No rollout yet." in default

        started = await _cascade(
            registry, "rollout", "bc", "2", "--plan", str(plan), "--reason", "go", env=AS_ALICE
        )

        assert "bc v2: rollout started" in started
        assert "shadow:    v2 scores 100%" in started
        assert "running, step 0 of 2: shadow 100% (at least 50 requests and 5 s)" in started
        assert "-> 0. shadow 100%" in started and "error rate <= 0.02" in started
        whole = json.loads(await _cascade(registry, "rollout", "bc", "--json", "--token", BOB))
        assert whole["plan"]["is_default"] is False and whole["plan"]["actor"] == "alice"
        assert whole["plan"]["thresholds"]["min_compared_rows"] == 30
        rollout = whole["traffic"]["rollout"]
        assert (rollout["version"], rollout["state"], rollout["step"]) == (2, "running", 0)
        busy = await _cascade(registry, "canary", "bc", "2", "--percent", "5", code=EXIT_USAGE, env=AS_ALICE)
        assert "abort it first" in busy
        assert "--reason" in await _cascade(
            registry, "rollout", "bc", "--abort", code=EXIT_USAGE, env=AS_ALICE
        )
        denied = await _cascade(
            registry, "rollout", "bc", "--abort", "--reason", "no", "--token", BOB, code=EXIT_DENIED
        )
        assert len(denied.strip().splitlines()) == 1

        aborted = await _cascade(
            registry, "rollout", "bc", "--abort", "--reason", "p99 3.1x the champion's", env=AS_ALICE
        )

        assert "shadow:    -" in aborted and "rolled back at step 0" in aborted
        assert "cause: p99 3.1x the champion's" in aborted
        again = await _cascade(
            registry, "rollout", "bc", "--abort", "--reason", "x", code=EXIT_USAGE, env=AS_ALICE
        )
        assert "no rollout running" in again
        history = json.loads(await _cascade(registry, "history", "bc", "--json", env=AS_ALICE))["moves"]
        assert (history[-1]["alias"], history[-1]["reason"]) == ("shadow", "p99 3.1x the champion's")


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ("not json", "not JSON"),
        ('{"steps": "shadow"}', "needs a list of steps"),
        ('{"steps": [{"stage": "blue", "percent": 5}]}', "shadow or canary"),
        ('{"steps": [{"stage": "canary", "pct": 5}]}', "pct"),
        ('{"steps": []}', "at least one step"),  # the registry's own check
        (
            '{"steps": [{"stage": "canary", "percent": 5}], "thresholds": {"min_agreement": 2}}',
            "min_agreement",
        ),
    ],
)
async def test_a_bad_plan_file_exits_2_naming_what_is_wrong(
    tmp_path: Path, onnx_model: bytes, content: str, said: str
) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(content)
    async with _registry(tmp_path) as registry:
        await _cascade(registry, "register", "bc")
        refused = await _cascade(registry, "rollout", "bc", "--plan", str(plan), code=EXIT_USAGE)
        assert said in refused and len(refused.strip().splitlines()) == 1, refused
        assert registry.core.store.rollout_plan("bc") is None


async def test_progressive_policy_and_the_sdk_follow_a_rollout(tmp_path: Path, onnx_model: bytes) -> None:
    async with _registry(tmp_path) as registry:
        await _cascade(registry, "register", "bc")
        assert "promotion policy progressive" in await _cascade(registry, "policy", "bc", "progressive")
        assert "policy:      progressive" in await _cascade(registry, "show", "bc")
        await _passing(registry, onnx_model, 1)  # the first is champion: nothing to compare with

        def use_the_sdk() -> None:
            with Client({"registry": registry.address}, timeout=10) as cascade:
                cascade.set_rollout_plan("bc", [RolloutStep("canary", 25)])
                asyncio.run_coroutine_threadsafe(_passing(registry, onnx_model, 2), loop).result()
                running = cascade.traffic("bc")
                assert (running.canary_version, running.canary_percent) == (2, 25.0)
                assert running.rollout is not None and running.rollout.current_step == RolloutStep(
                    "canary", 25
                )
                with pytest.raises(FailedPrecondition, match="at step 0, not 1"):
                    cascade.advance_rollout("bc", 2, 1)
                done = cascade.advance_rollout("bc", 2, 0, reason="held")
                assert (done.champion_version, done.canary_version) == (2, 0)
                assert done.rollout is not None and done.rollout.state == "promoted"
                assert cascade.rollout_plan("bc").steps == (RolloutStep("canary", 25.0),)

        loop = asyncio.get_running_loop()
        await asyncio.to_thread(use_the_sdk)
        await _passing(registry, onnx_model, 3)  # the plan's one canary step
        shown = await _cascade(registry, "show", "bc")
        assert "v3 passed validation and is rolling out on live traffic" in " ".join(shown.split())
        shown = await _cascade(registry, "traffic", "bc")
        assert "champion:  v2" in shown and "canary:    v3 answers 25%" in shown


def test_following_a_version_that_rolls_out_says_so_and_not_awaiting_approval() -> None:
    rolling = model_version(aliases=("canary", "challenger"))
    [line] = outcome_lines("cancer", Challenger(rolling), 1.0)
    assert "rolling out on live traffic" in line and "cascade models traffic cancer" in line
    [line] = outcome_lines("cancer", Challenger(model_version(aliases=("challenger",))), 1.0)
    assert "awaiting approval" in line
