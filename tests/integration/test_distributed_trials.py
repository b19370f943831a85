"""One hyperparameter study spread over two real trainer processes, over real Kafka: both replicas
keep studies in one PostgreSQL database (CASCADE_TRAINER_STUDY_STORAGE_URL), the replica whose
partition gets the *data arrived* opens the study and announces it (training-studies.v1), the other
joins. Read back from the study storage: both replicas ran trials of the one study, and no more
trials than the budget; from the registry: the run made exactly one model version, whose trial
record is the study's. Its own stack (home, ports 281xx, topic prefix), with only the services a
training run needs (ingest, registry, two trainers).

The same stack trains a version over CASCADE_TRAINER_OUT_OF_CORE_ROWS out of core: streamed from
ingest into a spool file, read segment by segment, one of the incremental families fitted."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import optuna
import pandas as pd
import pytest
from sklearn.datasets import make_classification
from typer.testing import CliRunner

from cascade.cli.main import app
from cascade.services.trainer.distributed import CLAIMED_BY, STUDY_PREFIX
from cascade.stack import Stack, StackConfig
from cascade.stubs.cascade.registry.v1 import registry_pb2 as pb
from cascade.stubs.cascade.registry.v1 import registry_pb2_grpc
from tests.databases import new_postgres_database
from tests.integration.support import upload, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(400)]

SERVICES = ("ingest", "registry", "trainer")
# Replica 2 of the trainer listens 10 above (cascade.stack.launcher.REPLICA_PORT_STEP): 28162.
PORTS = {"ingest": 28151, "trainer": 28152, "registry": 28154}
MODEL = "distributed_rf"
BUDGET = 8
# Random forests on 8,000 rows x 20 with 3-fold CV: a trial takes seconds on this machine, long
# enough for the second replica to read the announcement, download the version and claim slots.
OUT_OF_CORE_ROWS = 10_000
SPEC = {"strategy": "random", "max_trials": BUDGET, "estimators": ["random_forest"], "max_seconds": 150}


@pytest.fixture(scope="module")
def study_url(postgres_server: str) -> str:
    return new_postgres_database(postgres_server, "trainer_studies")


@pytest.fixture(scope="module")
def two_trainers(request: pytest.FixtureRequest, study_url: str) -> Iterator[Stack]:
    home = Path(tempfile.mkdtemp(prefix="cascade-studies-"))
    config = StackConfig(
        home=home,
        kafka_port=28190,
        controller_port=28191,
        topic_prefix="studies",
        ports=PORTS,
        metrics_ports={},
        traces=False,
        replicas={"trainer": 2},
        extra_env={
            "CASCADE_TRAINER_STUDY_STORAGE_URL": study_url,
            # The search is under test, not the explanations: no global attribution.
            "CASCADE_TRAINER_ATTRIBUTION_MAX_EVALUATIONS": "1",
            # Versions over this are trained out of core; the study's (8,000 rows) is not.
            "CASCADE_TRAINER_OUT_OF_CORE_ROWS": str(OUT_OF_CORE_ROWS),
        },
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    stack = Stack(config, environ=environ)
    failed_before = request.session.testsfailed
    try:
        stack.start(SERVICES, timeout=180)
        yield stack
    finally:
        stack.stop()
    if request.session.testsfailed > failed_before or os.environ.get("CASCADE_KEEP_TEST_STACK"):
        print(f"\ndistributed trials stack kept in {home}")
    else:
        shutil.rmtree(home, ignore_errors=True)


def _versions(stack: Stack, model: str) -> list[pb.ModelVersion]:
    with grpc.insecure_channel(stack.address("registry")) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        return list(stub.ListModelVersions(pb.ListModelVersionsRequest(model=model), timeout=10).versions)


def _worker_pids(stack: Stack) -> set[str]:
    """The pids of the two trainer replicas, as they name themselves on the trials they claim."""
    return {stack.pid_file(name).read_text().strip() for name in stack.replicas("trainer")}


def test_two_trainer_replicas_run_one_study_within_its_budget(two_trainers: Stack, study_url: str) -> None:
    stack = two_trainers
    spec_file = stack.home / "spec.json"
    spec_file.write_text(json.dumps(SPEC))
    result = CliRunner().invoke(app, ["--home", str(stack.home), "spec", "set", MODEL, str(spec_file)])
    assert result.exit_code == 0, result.output

    x, y = make_classification(n_samples=8_000, n_features=20, n_informative=8, random_state=3)
    upload(stack, MODEL, pd.DataFrame(x, columns=[f"f{i}" for i in range(20)]).assign(target=y))
    [version] = wait_for(lambda: _versions(stack, MODEL), 170, "the study's model version", interval=1.0)

    [name] = optuna.get_all_study_names(storage=study_url)
    assert name.startswith(STUDY_PREFIX)
    trials = optuna.load_study(study_name=name, storage=study_url).get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    claims = Counter(t.system_attrs.get(CLAIMED_BY) for t in trials)
    print(f"\nstudy {name}: {dict(states)}; trials claimed by {dict(claims)}")
    # The budget holds across replicas: exactly its slots, every one run once, none added.
    assert len(trials) == BUDGET
    assert states["COMPLETE"] + states["PRUNED"] == BUDGET
    # Both replicas ran trials of the one study (a worker is "host:pid").
    workers = {str(t.system_attrs[CLAIMED_BY]) for t in trials}
    assert {worker.rsplit(":", 1)[1] for worker in workers} == _worker_pids(stack)

    # One run, one version; its trial record is every replica's trials.
    recorded = json.loads(version.tags["trials"])
    assert sorted(t["number"] for t in recorded) == list(range(BUDGET))
    assert version.run.params["estimator"] == "random_forest"
    assert _versions(stack, MODEL) == [version]


def test_a_version_over_the_threshold_is_trained_out_of_core(two_trainers: Stack) -> None:
    stack, model = two_trainers, "out_of_core_lr"
    x, y = make_classification(n_samples=15_000, n_features=12, n_informative=6, random_state=5)
    upload(stack, model, pd.DataFrame(x, columns=[f"f{i}" for i in range(12)]).assign(target=y))
    [version] = wait_for(lambda: _versions(stack, model), 150, "the out-of-core version", interval=1.0)

    assert version.run.params["estimator"] == "logistic_regression"  # the default family that can
    assert "logistic_regression fitted segment by segment" in version.tags["out_of_core"]
    trials = json.loads(version.tags["trials"])
    assert trials and all(t["out_of_core"] and t["estimator"] == "logistic_regression" for t in trials)
    assert version.run.metrics["holdout_accuracy"] > 0.75
    assert json.loads(version.tags["parity_reference"])["rows"]  # the export passed its parity gate
    logs = "".join(stack.log_file(name).read_text() for name in stack.replicas("trainer"))
    assert "over 10000: out of core" in logs
