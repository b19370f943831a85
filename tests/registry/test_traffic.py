"""Progressive delivery in the registry, through a real authenticating server and the typed client,
on SQLite and PostgreSQL: a manual split (canary, shadow) moves the aliases with their percents in
the history and announces ModelTrafficChanged through the outbox; under the PROGRESSIVE policy a
passing version rolls out through the model's plan on its own, the monitor's principal advances it
(from the step it saw, or is told someone moved it first) until it becomes champion as any
promotion, or aborts it with a cause that clears canary and shadow at once; bad input is refused
with the right status and moves nothing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cascade.client.calls import RemoteService
from cascade.client.channels import ClientSecurity
from cascade.client.ingest import IngestClient
from cascade.client.records import RolloutStep, RolloutThresholds
from cascade.client.registry import RegistryClient
from cascade.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from cascade.events import Event, ModelAliasChanged, ModelPromoted, ModelTrafficChanged, ModelValidated
from cascade.grpc_io import open_channel
from cascade.security import (
    SERVICE_ROLES,
    Authenticator,
    AuthInterceptor,
    PrincipalEntry,
    Principals,
    hash_token,
)
from cascade.services.registry.artifacts import LocalArtifactStore
from cascade.services.registry.core import Lineage, RegistryCore
from cascade.services.registry.grpc_api import ROLES, RegistryServicer
from cascade.services.registry.permissions import Permissions
from cascade.services.registry.store import RegistryStore
from cascade.services.trainer.training import TrainingResult
from cascade.stubs.cascade.registry.v1 import registry_pb2_grpc
from tests.grpc_server import serving

# alice registers (and so manages) the models; bob only reads them; monitor is the monitor's own
# identity, with exactly the roles the stack gives it.
PRINCIPALS = Principals(
    PrincipalEntry(name, frozenset(roles), hash_token(f"{name}-token-0123456789"))
    for name, roles in {
        "alice": {"registry:register"},
        "bob": set[str](),
        "monitor": set(SERVICE_ROLES["monitor"]),
    }.items()
)
PLAN = [RolloutStep("shadow", 100, 200, 10), RolloutStep("canary", 10, 200, 10), RolloutStep("canary", 50)]


@dataclass
class Registry:
    core: RegistryCore
    published: list[Event]
    connect: Callable[[str], AbstractAsyncContextManager[RegistryClient]]

    def traffic_events(self) -> list[ModelTrafficChanged]:
        return [e for e in self.published if isinstance(e, ModelTrafficChanged)]

    def promotions(self) -> list[ModelPromoted]:
        return [e for e in self.published if isinstance(e, ModelPromoted)]

    async def version(self, registry: RegistryClient, onnx_bytes: bytes, passed: bool = True) -> int:
        """Upload a version of "bc" and hand the registry the validator's verdict on it."""
        created = await registry.create_version("bc", onnx_bytes, dataset="bc", dataset_version="d1")
        await self.core.on_validated(
            ModelValidated(
                source="v", subject="bc", model="bc", model_version=created.version, passed=passed, gates=[]
            )
        )
        return created.version


@pytest.fixture
async def registry(tmp_path: Path, database_url: str) -> AsyncIterator[Registry]:
    published: list[Event] = []

    async def publish(event: Event) -> None:
        published.append(event)

    store = RegistryStore(database_url)
    core = RegistryCore(store, LocalArtifactStore(tmp_path / "a"), publish, "automatic")
    unused_ingest = IngestClient.connect("127.0.0.1:9")
    servicer = RegistryServicer(
        core, Lineage(core, unused_ingest), tmp_path / "spool", 10_000_000, Permissions(store, "read")
    )
    auth = AuthInterceptor(Authenticator(PRINCIPALS, required=True), ROLES)

    def register(server: grpc.aio.Server) -> None:
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)

    async with serving(register, [auth]) as address:

        @asynccontextmanager
        async def connect(name: str) -> AsyncIterator[RegistryClient]:
            security = ClientSecurity(token=f"{name}-token-0123456789")
            async with open_channel(address, security) as channel:
                yield RegistryClient(RemoteService("registry", channel), timeout=10)

        yield Registry(core, published, connect)
    await unused_ingest.close()
    store.close()


async def test_a_manual_canary_and_shadow_move_the_aliases_with_their_percents_and_announce_it(
    registry: Registry, trained_breast_cancer: TrainingResult
) -> None:
    onnx_bytes = trained_breast_cancer.onnx_bytes
    async with registry.connect("alice") as alice, registry.connect("bob") as bob:
        await alice.register_model("bc")
        for _ in range(3):
            await registry.version(alice, onnx_bytes)  # automatic: v3 ends up champion
        await alice.set_alias("bc", "champion", 1, reason="back to v1 for the test")
        untouched = await bob.get_traffic("bc")
        assert (untouched.champion_version, untouched.canary_version, untouched.shadow_version) == (1, 0, 0)
        assert (untouched.revision, untouched.rollout) == (0, None)

        split = await alice.set_traffic(
            "bc", canary_version=2, canary_percent=10, shadow_version=3, shadow_percent=50, reason="try v2"
        )

        assert (split.champion_version, split.canary_version, split.canary_percent) == (1, 2, 10.0)
        assert (split.shadow_version, split.shadow_percent, split.revision) == (3, 50.0, 1)
        assert (split.actor, split.reason) == ("alice", "try v2") and split.updated_at is not None
        assert await bob.get_traffic("bc") == split  # reading it needs only read
        moves = [m for m in await bob.alias_history("bc") if m.alias in ("canary", "shadow")]
        assert [(m.alias, m.to_version, m.traffic_percent) for m in moves] == [
            ("canary", 2, 10.0),
            ("shadow", 3, 50.0),
        ]
        [event] = registry.traffic_events()
        assert (event.action, event.revision, event.champion_version) == ("set", 1, 1)
        assert (event.canary_version, event.canary_percent, event.shadow_version, event.shadow_percent) == (
            2,
            10.0,
            3,
            50.0,
        )
        assert (event.actor, event.reason, event.rollout_version) == ("alice", "try v2", None)

        wider = await alice.set_traffic("bc", canary_version=2, canary_percent=25, reason="more")
        assert (wider.canary_percent, wider.shadow_version, wider.shadow_percent, wider.revision) == (
            25.0,
            0,
            0.0,
            2,
        )
        moves = [m for m in await bob.alias_history("bc") if m.alias in ("canary", "shadow")][2:]
        assert [(m.alias, m.from_version, m.to_version, m.traffic_percent) for m in moves] == [
            ("canary", 2, 2, 25.0),  # the same version, a new share: still a move in the history
            ("shadow", 3, 0, 0.0),
        ]
        with pytest.raises(FailedPrecondition, match="at revision 2, not 1"):  # read before `wider`
            await alice.set_traffic("bc", canary_version=3, canary_percent=5, expected_revision=1)
        cleared = await alice.set_traffic("bc", reason="done", expected_revision=2)
        assert (cleared.canary_version, cleared.canary_percent, cleared.revision) == (0, 0.0, 3)
        assert "canary" not in (await bob.get_model("bc")).aliases
        assert [e.revision for e in registry.traffic_events()] == [1, 2, 3]
        assert registry.core.store.pending_events() == []  # everything went out through the outbox


async def test_a_bad_split_is_refused_with_the_right_status_and_moves_nothing(
    registry: Registry, trained_breast_cancer: TrainingResult
) -> None:
    onnx_bytes = trained_breast_cancer.onnx_bytes
    async with registry.connect("alice") as alice, registry.connect("bob") as bob:
        await alice.register_model("bc", promotion_policy="manual")
        await registry.version(alice, onnx_bytes)  # the challenger; no champion yet
        with pytest.raises(FailedPrecondition, match="no champion"):
            await alice.set_traffic("bc", canary_version=1, canary_percent=10)
        await alice.approve_version("bc", 1, reason="first")
        await registry.version(alice, onnx_bytes)
        assert await registry.version(alice, onnx_bytes, passed=False) == 3
        before = len(registry.published)

        with pytest.raises(InvalidArgument, match=r"0\.\.100"):
            await alice.set_traffic("bc", canary_version=2, canary_percent=150)
        with pytest.raises(InvalidArgument, match=r"0\.\.100"):
            await alice.set_traffic("bc", shadow_version=2, shadow_percent=-1)
        with pytest.raises(InvalidArgument, match="both a version and a percent"):
            await alice.set_traffic("bc", canary_version=2)
        with pytest.raises(InvalidArgument, match="both a version and a percent"):
            await alice.set_traffic("bc", canary_percent=5)
        with pytest.raises(InvalidArgument, match="own canary"):
            await alice.set_traffic("bc", canary_version=1, canary_percent=5)
        with pytest.raises(InvalidArgument, match="both the canary and the shadow"):
            await alice.set_traffic(
                "bc", canary_version=2, canary_percent=5, shadow_version=2, shadow_percent=5
            )
        with pytest.raises(NotFound):
            await alice.set_traffic("bc", canary_version=9, canary_percent=5)
        with pytest.raises(NotFound):
            await alice.get_traffic("no-such-model")
        with pytest.raises(InvalidArgument):
            await alice.get_traffic("bad name!")
        with pytest.raises(FailedPrecondition, match="failed validation"):
            await alice.set_traffic("bc", canary_version=3, canary_percent=5)
        with pytest.raises(PermissionDenied, match="manage"):
            await bob.set_traffic("bc", canary_version=2, canary_percent=5)
        with pytest.raises(InvalidArgument, match="longer than 4096"):  # the event stays small
            await alice.set_traffic("bc", canary_version=2, canary_percent=5, reason="x" * 5000)

        assert len(registry.published) == before
        assert (await bob.get_traffic("bc")).revision == 0


async def _progressive_model(registry: Registry, alice: RegistryClient, onnx_bytes: bytes) -> None:
    """ "bc" under the progressive policy with a champion (v1) and its own three-step plan."""
    await alice.register_model("bc", promotion_policy="progressive")
    await alice.set_rollout_plan("bc", PLAN, RolloutThresholds(max_error_rate=0.02))
    assert await registry.version(alice, onnx_bytes) == 1  # nothing to compare with: the champion


async def test_a_progressive_version_rolls_out_step_by_step_and_becomes_champion_as_a_promotion(
    registry: Registry, trained_breast_cancer: TrainingResult
) -> None:
    onnx_bytes = trained_breast_cancer.onnx_bytes
    async with registry.connect("alice") as alice, registry.connect("monitor") as monitor:
        await _progressive_model(registry, alice, onnx_bytes)
        assert (await alice.get_model("bc")).promotion_policy == "progressive"
        assert (await alice.get_traffic("bc")).rollout is None

        assert await registry.version(alice, onnx_bytes) == 2

        started = await monitor.get_traffic("bc")
        assert (await alice.get_model("bc")).aliases == {"champion": 1, "challenger": 2, "shadow": 2}
        assert (started.champion_version, started.shadow_version, started.shadow_percent) == (1, 2, 100.0)
        assert started.canary_version == 0
        rollout = started.rollout
        assert rollout is not None and (rollout.version, rollout.state, rollout.step) == (2, "running", 0)
        assert rollout.plan.steps == tuple(PLAN) and rollout.plan.thresholds.max_error_rate == 0.02
        assert rollout.started_at is not None and rollout.step_started_at == rollout.started_at
        event = registry.traffic_events()[-1]
        assert (event.action, event.rollout_version, event.rollout_step, event.actor) == (
            "rollout_started",
            2,
            0,
            "validator",
        )

        canary = await monitor.advance_rollout("bc", 2, 0, reason="200 shadow scorings, all thresholds hold")
        assert (canary.shadow_version, canary.canary_version, canary.canary_percent) == (0, 2, 10.0)
        assert canary.rollout is not None and canary.rollout.step == 1
        assert canary.rollout.step_started_at is not None and rollout.step_started_at is not None
        assert canary.rollout.step_started_at > rollout.step_started_at
        assert canary.revision == started.revision + 1 and canary.actor == "monitor"
        # Someone else (another monitor replica) moved it already: told so, nothing moves.
        with pytest.raises(FailedPrecondition, match="at step 1, not 0"):
            await monitor.advance_rollout("bc", 2, 0, reason="late")
        with pytest.raises(FailedPrecondition, match="of v2, not v3"):
            await monitor.advance_rollout("bc", 3, 1, reason="wrong version")
        with pytest.raises(FailedPrecondition, match="abort it first"):
            await alice.set_traffic("bc", canary_version=2, canary_percent=90)
        # The monitor's role moves rollouts and nothing else.
        with pytest.raises(PermissionDenied):
            await monitor.set_alias("bc", "champion", 2)
        with pytest.raises(PermissionDenied):
            await monitor.set_traffic("bc")
        assert (await monitor.advance_rollout("bc", 2, 1)).canary_percent == 50.0
        promotions = len(registry.promotions())

        done = await monitor.advance_rollout("bc", 2, 2, reason="canary 50% held")

        assert (done.champion_version, done.canary_version, done.shadow_version) == (2, 0, 0)
        assert done.rollout is not None and (done.rollout.state, done.rollout.step) == ("promoted", 2)
        assert "completed its plan" in done.rollout.cause and "canary 50% held" in done.rollout.cause
        [promoted] = registry.promotions()[promotions:]  # serving swaps on it, as on any promotion
        assert (promoted.model_version, promoted.previous_version, promoted.actor) == (2, 1, "monitor")
        last = registry.traffic_events()[-1]
        assert (last.action, last.champion_version, last.canary_version, last.rollout_version) == (
            "promoted",
            2,
            None,
            2,
        )
        revisions = [e.revision for e in registry.traffic_events()]
        assert revisions == sorted(set(revisions))  # every change a new, larger revision
        with pytest.raises(FailedPrecondition, match="no rollout running"):
            await monitor.advance_rollout("bc", 2, 2)
        assert registry.core.store.pending_events() == []


async def test_aborting_clears_canary_and_shadow_at_once_and_records_the_cause(
    registry: Registry, trained_breast_cancer: TrainingResult
) -> None:
    onnx_bytes = trained_breast_cancer.onnx_bytes
    cause = "max_error_rate breached: 0.031 > 0.02 over 412 requests"
    async with registry.connect("alice") as alice, registry.connect("monitor") as monitor:
        await _progressive_model(registry, alice, onnx_bytes)
        await registry.version(alice, onnx_bytes)
        await monitor.advance_rollout("bc", 2, 0)
        with pytest.raises(InvalidArgument, match="cause"):
            await monitor.abort_rollout("bc", 2, reason=" ")
        with pytest.raises(FailedPrecondition, match="of v2, not v5"):
            await monitor.abort_rollout("bc", 5, reason=cause)

        aborted = await monitor.abort_rollout("bc", 2, reason=cause)

        assert (aborted.champion_version, aborted.canary_version, aborted.canary_percent) == (1, 0, 0.0)
        assert aborted.rollout is not None and (aborted.rollout.state, aborted.rollout.cause) == (
            "rolled_back",
            cause,
        )
        assert (await alice.get_model("bc")).aliases == {"champion": 1, "challenger": 2}
        last_move = (await alice.alias_history("bc"))[-1]
        assert (last_move.alias, last_move.from_version, last_move.to_version, last_move.reason) == (
            "canary",
            2,
            0,
            cause,
        )
        changed = [e for e in registry.published if isinstance(e, ModelAliasChanged)][-1]
        assert (changed.alias, changed.action) == ("canary", "rolled_back")
        event = registry.traffic_events()[-1]
        assert (event.action, event.reason, event.rollout_version, event.canary_version) == (
            "rolled_back",
            cause,
            2,
            None,
        )
        with pytest.raises(FailedPrecondition, match="no rollout running"):
            await monitor.abort_rollout("bc", reason=cause)
        # A person may start it again by hand (it is the challenger, READY), from the first step.
        again = await alice.start_rollout("bc", 2, reason="fixed the feature pipeline")
        assert again.rollout is not None and (again.rollout.state, again.rollout.step) == ("running", 0)
        assert again.shadow_version == 2
        # Without a version, the abort is of whatever runs.
        assert (await alice.abort_rollout("bc", reason="changed my mind")).shadow_version == 0


async def test_starting_a_rollout_by_hand_is_refused_when_it_cannot_run(
    registry: Registry, trained_breast_cancer: TrainingResult
) -> None:
    onnx_bytes = trained_breast_cancer.onnx_bytes
    async with registry.connect("alice") as alice, registry.connect("bob") as bob:
        await alice.register_model("bc")  # automatic: every passing version becomes champion
        await registry.version(alice, onnx_bytes)
        await registry.version(alice, onnx_bytes)
        assert await registry.version(alice, onnx_bytes, passed=False) == 3
        await alice.set_alias("bc", "champion", 1, reason="v1 for the test")
        before = len(registry.published)

        with pytest.raises(FailedPrecondition, match="champion already"):
            await alice.start_rollout("bc", 1)
        with pytest.raises(FailedPrecondition, match="failed validation"):
            await alice.start_rollout("bc", 3)
        with pytest.raises(NotFound):
            await alice.start_rollout("bc", 7)
        with pytest.raises(InvalidArgument):
            await alice.start_rollout("bc", 0)
        with pytest.raises(PermissionDenied, match="manage"):
            await bob.start_rollout("bc", 2)
        with pytest.raises(PermissionDenied):
            await bob.abort_rollout("bc", reason="no")
        assert len(registry.published) == before

        started = await alice.start_rollout("bc", 2, reason="by hand")
        assert started.rollout is not None and started.rollout.plan.is_default is False
        assert [s.stage for s in started.rollout.plan.steps] == ["shadow", "canary", "canary"]  # the default
        assert (await alice.get_model("bc")).aliases["challenger"] == 2
        with pytest.raises(FailedPrecondition, match="abort it first"):
            await alice.start_rollout("bc", 2)


async def test_a_newer_passing_version_supersedes_the_running_rollout(
    registry: Registry, trained_breast_cancer: TrainingResult
) -> None:
    onnx_bytes = trained_breast_cancer.onnx_bytes
    async with registry.connect("alice") as alice:
        await _progressive_model(registry, alice, onnx_bytes)
        await registry.version(alice, onnx_bytes)
        await alice.advance_rollout("bc", 2, 0)

        assert await registry.version(alice, onnx_bytes) == 3

        traffic = await alice.get_traffic("bc")
        assert (traffic.canary_version, traffic.shadow_version, traffic.shadow_percent) == (0, 3, 100.0)
        assert traffic.rollout is not None and (traffic.rollout.version, traffic.rollout.step) == (3, 0)
        superseded, started = registry.traffic_events()[-2:]
        assert (superseded.action, superseded.reason, superseded.rollout_version) == (
            "rolled_back",
            "superseded by v3",
            2,
        )
        assert (started.action, started.rollout_version) == ("rollout_started", 3)
        assert started.revision == superseded.revision + 1
        # A failing version changes nothing.
        await registry.version(alice, onnx_bytes, passed=False)
        assert (await alice.get_traffic("bc")).rollout == traffic.rollout


async def test_moving_the_champion_by_hand_ends_the_rollout(
    registry: Registry, trained_breast_cancer: TrainingResult
) -> None:
    onnx_bytes = trained_breast_cancer.onnx_bytes
    async with registry.connect("alice") as alice:
        await _progressive_model(registry, alice, onnx_bytes)
        await registry.version(alice, onnx_bytes)
        await alice.advance_rollout("bc", 2, 0)

        await alice.set_alias("bc", "champion", 2, reason="no need to wait")

        traffic = await alice.get_traffic("bc")
        assert (traffic.champion_version, traffic.canary_version, traffic.shadow_version) == (2, 0, 0)
        assert traffic.rollout is not None and traffic.rollout.state == "promoted"
        assert traffic.rollout.cause == "the champion was moved to v2 outside the rollout, by alice"

        await registry.version(alice, onnx_bytes)  # v3 rolls out against v2
        await alice.rollback("bc", reason="v2 misbehaves")  # champion back to v1
        traffic = await alice.get_traffic("bc")
        assert (traffic.champion_version, traffic.shadow_version) == (1, 0)
        assert traffic.rollout is not None and traffic.rollout.state == "rolled_back"


async def test_the_rollout_plan_is_the_default_until_set_and_a_bad_plan_is_refused(
    registry: Registry, trained_breast_cancer: TrainingResult
) -> None:
    async with registry.connect("alice") as alice, registry.connect("bob") as bob:
        await alice.register_model("bc")
        default = await bob.get_rollout_plan("bc")
        assert default.is_default and default.model == "bc" and default.updated_at is None
        assert [(s.stage, s.percent, s.min_requests, s.min_seconds) for s in default.steps] == [
            ("shadow", 100.0, 200, 10.0),
            ("canary", 10.0, 200, 10.0),
            ("canary", 50.0, 200, 10.0),
        ]
        assert default.thresholds == RolloutThresholds()
        assert default.thresholds.min_compared_rows == 100 and default.thresholds.p99_floor_ms == 5.0

        for steps, thresholds, complaint in [
            ([], None, "at least one step"),
            ([RolloutStep("canary", 0)], None, "above 0"),
            ([RolloutStep("canary", 101)], None, "0..100"),
            ([RolloutStep("shadow", 50, min_requests=-1)], None, "min_requests"),
            ([RolloutStep("shadow", 50)], RolloutThresholds(min_agreement=1.5), "min_agreement"),
            ([RolloutStep("shadow", 50)], RolloutThresholds(max_p99_ratio=float("nan")), "max_p99_ratio"),
            ([RolloutStep("blue", 50)], None, "give its stage"),  # type: ignore[arg-type]
            ([RolloutStep("canary", 5, min_seconds=float("inf"))], None, "min_seconds"),
            ([RolloutStep("canary", 5)] * 21, None, "at most 20 steps"),
        ]:
            with pytest.raises(InvalidArgument, match=complaint):
                await alice.set_rollout_plan("bc", steps, thresholds)
        with pytest.raises(PermissionDenied, match="manage"):
            await bob.set_rollout_plan("bc", PLAN)
        with pytest.raises(NotFound):
            await alice.get_rollout_plan("no-such-model")
        assert (await bob.get_rollout_plan("bc")).is_default

        stored = await alice.set_rollout_plan("bc", [RolloutStep("canary", 5, 50, 1)], actor="mallory")

        assert (stored.is_default, stored.actor) == (False, "alice (claimed mallory)")
        assert stored.steps == (RolloutStep("canary", 5.0, 50, 1.0),) and stored.updated_at is not None
        assert await bob.get_rollout_plan("bc") == stored


async def test_canary_and_shadow_moved_as_plain_aliases_bump_the_split_and_wait_for_a_rollout(
    registry: Registry, trained_breast_cancer: TrainingResult
) -> None:
    onnx_bytes = trained_breast_cancer.onnx_bytes
    async with registry.connect("alice") as alice:
        await _progressive_model(registry, alice, onnx_bytes)
        await registry.version(alice, onnx_bytes)  # v2 rolls out, as shadow
        with pytest.raises(FailedPrecondition, match="abort it first"):
            await alice.set_alias("bc", "canary", 2)
        with pytest.raises(FailedPrecondition, match="abort it first"):
            await alice.delete_alias("bc", "shadow")
        await alice.abort_rollout("bc", reason="by hand")
        await alice.set_traffic("bc", canary_version=2, canary_percent=30)
        before = await alice.get_traffic("bc")

        await alice.delete_alias("bc", "canary", reason="enough")

        after = await alice.get_traffic("bc")
        assert (after.canary_version, after.canary_percent, after.revision) == (0, 0.0, before.revision + 1)
        event = registry.traffic_events()[-1]
        assert (event.action, event.revision, event.canary_version, event.reason) == (
            "set",
            after.revision,
            None,
            "enough",
        )


async def test_two_replicas_advancing_the_same_step_at_once_move_it_once(
    registry: Registry, trained_breast_cancer: TrainingResult, database_url: str, tmp_path: Path
) -> None:
    """Two registries on one database (each its own store and core, in its own thread, as two
    replicas would be): of two advances from step 0 at the same moment, one moves the rollout and
    the other is told someone else did; the step is not skipped."""
    onnx_bytes = trained_breast_cancer.onnx_bytes
    async with registry.connect("alice") as alice:
        await _progressive_model(registry, alice, onnx_bytes)
        await registry.version(alice, onnx_bytes)
    replicas = [
        RegistryCore(RegistryStore(database_url), LocalArtifactStore(tmp_path / "a"), _dropped, "automatic")
        for _ in range(2)
    ]
    start = threading.Barrier(2)

    def advance(core: RegistryCore) -> str:
        start.wait()
        try:
            asyncio.run(core.advance_rollout("bc", 2, 0, "monitor", "held"))
        except FailedPrecondition as refused:
            return str(refused)
        return "moved"

    outcomes = await asyncio.gather(*(asyncio.to_thread(advance, core) for core in replicas))

    assert sorted(outcomes) == ["moved", "the rollout of bc v2 is at step 1, not 0"]
    traffic = registry.core.get_traffic("bc")
    assert traffic.rollout is not None and traffic.rollout.step == 1
    assert (traffic.canary_version, traffic.canary_percent) == (2, 10.0)
    for core in replicas:
        core.store.close()


async def _dropped(event: Event) -> None:
    """A replica's publisher in a test that reads the outcome from the database."""
