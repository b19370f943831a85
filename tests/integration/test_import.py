"""Bring your own model on the real stack: an XGBoost model trained outside Cascade is imported with a
reference dataset, gated against the champion by the validator, served and drift-monitored like a
trained candidate; one imported without a reference is labelled unmonitored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import lightgbm
import numpy as np
import pytest
import xgboost
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from typer.testing import CliRunner

from cascade.cli.main import app
from cascade.grpc_io import CHUNK_SIZE, open_blocking_channel
from cascade.services.trainer.training import export_onnx
from cascade.stack import Stack
from cascade.stubs.cascade.monitor.v1 import monitor_pb2
from cascade.stubs.cascade.registry.v1 import registry_pb2, registry_pb2_grpc
from cascade.stubs.cascade.trainer.v1 import trainer_pb2 as pb
from cascade.stubs.cascade.trainer.v1 import trainer_pb2_grpc
from tests.integration.support import drift_report, infer, model_ready, upload, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CASCADE_TIMEOUT = 120.0


def _import(stack: Stack, header: pb.ImportHeader, data: bytes) -> pb.ImportModelResponse:
    def requests() -> Iterator[pb.ImportModelRequest]:
        yield pb.ImportModelRequest(header=header)
        for start in range(0, len(data), CHUNK_SIZE):
            yield pb.ImportModelRequest(chunk=data[start : start + CHUNK_SIZE])

    with open_blocking_channel(stack.address("trainer"), stack.client_security) as channel:
        response: pb.ImportModelResponse = trainer_pb2_grpc.TrainerServiceStub(channel).ImportModel(
            requests(), timeout=120
        )
        return response


def _version(stack: Stack, model: str, version: int = 0, alias: str = "") -> registry_pb2.ModelVersion | None:
    request = (
        registry_pb2.GetModelVersionRequest(model=model, alias=alias)
        if alias
        else registry_pb2.GetModelVersionRequest(model=model, version=version)
    )
    with open_blocking_channel(stack.address("registry"), stack.client_security) as channel:
        try:
            found: registry_pb2.ModelVersion = registry_pb2_grpc.RegistryServiceStub(channel).GetModelVersion(
                request, timeout=10
            )
            return found
        except grpc.RpcError:
            return None


def test_an_xgboost_model_trained_elsewhere_is_gated_served_and_monitored(
    stack: Stack, tmp_path: Path
) -> None:
    model = "bc_byom"
    frame = load_breast_cancer(as_frame=True).frame.sample(frac=1.0, random_state=11).reset_index(drop=True)
    features = [c for c in frame.columns if c != "target"]
    response, _ = upload(stack, model, frame)
    assert response.created
    wait_for(lambda: model_ready(stack, model, "1"), CASCADE_TIMEOUT, "the trained champion v1 to serve")

    # Trained outside Cascade, saved as XGBoost saves it.
    outside = xgboost.XGBClassifier(n_estimators=60, max_depth=3, learning_rate=0.2)
    outside.fit(frame[features], frame["target"])
    path = tmp_path / "model.json"
    outside.save_model(path)

    imported = _import(
        stack,
        pb.ImportHeader(
            model=model,
            format=pb.MODEL_FORMAT_XGBOOST,
            dataset=model,  # the dataset version ingest holds: its latest
            actor="it",
            reason="trained in a notebook",
        ),
        path.read_bytes(),
    )
    assert imported.model_version == 2
    assert imported.monitored
    assert imported.parity_rows > 0 and imported.parity_max_difference < 1e-4
    # The same file and reference again: the same version, not a new one.
    again = _import(
        stack, pb.ImportHeader(model=model, format=pb.MODEL_FORMAT_XGBOOST, dataset=model), path.read_bytes()
    )
    assert again.model_version == 2

    version = _version(stack, model, version=2)
    assert version is not None
    assert version.tags["source"] == "imported" and version.tags["format"] == "xgboost"
    assert version.tags["monitoring"] == "monitored"
    assert json.loads(version.tags["features"]) == features
    assert version.dataset == model and version.dataset_version

    # The validator judges it against the champion, as it judges a trained candidate.
    def verdict() -> registry_pb2.ModelVersion | None:
        found = _version(stack, model, version=2)
        return found if found is not None and found.validation.report_json else None

    judged = wait_for(verdict, CASCADE_TIMEOUT, "the validator's verdict on the imported v2")
    report = json.loads(judged.validation.report_json)
    assert judged.validation.passed, report
    assert report["champion_version"] == 1  # scored against the trained champion on the same fresh rows
    assert report["metrics"]["candidate"] >= report["metrics"]["champion"] - 0.05

    # Promoted like any passing candidate: serving answers with it, and with XGBoost's predictions.
    rows = frame[features].to_numpy(np.float32)
    wait_for(
        lambda: infer(stack, model, rows[:4])[0] == "2", CASCADE_TIMEOUT, "serving to swap to the import"
    )
    served_version, labels = infer(stack, model, rows[:64])
    assert served_version == "2"
    assert np.array_equal(labels.ravel(), outside.predict(rows[:64]))

    # And monitored: the monitor took its reference dataset and reports on its traffic.
    for start in range(0, 120, 30):
        infer(stack, model, rows[start : start + 30])

    def report_on_the_import() -> monitor_pb2.DriftReport | None:
        found = drift_report(stack, model)
        return found if found is not None and found.model_version == 2 and found.predictions_seen else None

    drift = wait_for(report_on_the_import, CASCADE_TIMEOUT, "the monitor's report on the imported v2")
    assert drift.reference_dataset_version == version.dataset_version
    assert len(drift.features) == len(features)


def test_an_import_without_reference_is_unmonitored_and_bad_files_are_refused(
    stack: Stack, tmp_path: Path
) -> None:
    """Through the CLI, as a user runs it: an ONNX file with parity rows and no reference."""
    model = "bc_byom_unmonitored"
    frame = load_breast_cancer(as_frame=True).frame
    features = [c for c in frame.columns if c != "target"]
    pipeline = Pipeline([("model", LogisticRegression(max_iter=3000))]).fit(
        frame[features].to_numpy(np.float32), frame["target"]
    )
    onnx_file, rows_file, bad_file = tmp_path / "model.onnx", tmp_path / "rows.csv", tmp_path / "bad.onnx"
    onnx_file.write_bytes(export_onnx(pipeline, len(features), "classification"))
    frame[features].head(50).to_csv(rows_file, index=False)
    bad_file.write_bytes(b"this is not a model")
    runner = CliRunner()
    home = ["--home", str(stack.home)]
    common = ["--features", ",".join(features), "--task", "classification", "--parity-rows", str(rows_file)]

    result = runner.invoke(app, [*home, "models", "import", model, str(onnx_file), *common, "--json"])
    assert result.exit_code == 0, result.output
    imported = json.loads(result.output)
    assert imported["monitored"] is False and imported["parity_rows"] == 50 and imported["format"] == "onnx"
    version = _version(stack, model, version=imported["version"])
    assert version is not None
    assert version.tags["monitoring"] == "unmonitored" and version.tags["source"] == "imported"
    assert version.dataset == ""
    shown = runner.invoke(app, [*home, "models", "show", f"{model}/{imported['version']}"])
    assert shown.exit_code == 0 and "UNMONITORED" in shown.output and "monitoring=unmonitored" in shown.output

    refused = runner.invoke(app, [*home, "models", "import", model, str(bad_file), *common])
    assert refused.exit_code == 2, refused.output  # INVALID_ARGUMENT: a request the service refused
    assert "not a valid ONNX model" in refused.output

    with pytest.raises(grpc.RpcError) as error:
        _import(
            stack,
            pb.ImportHeader(model=model, format=pb.MODEL_FORMAT_XGBOOST, dataset="no_such_dataset"),
            b"{}",
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND

    pickle_header = pb.ImportHeader(
        model=model,
        format=pb.MODEL_FORMAT_SKLEARN_PICKLE,
        features=features,
        task="classification",
        parity_rows_csv=rows_file.read_bytes(),
    )
    with pytest.raises(grpc.RpcError) as error:
        _import(stack, pickle_header, b"\x80\x04N.")  # a pickle of None: never unpickled here
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "pickle import is off" in str(error.value.details())


def test_cli_imports_lightgbm_with_a_reference_file_and_follows_the_verdict(
    stack: Stack, tmp_path: Path
) -> None:
    """--reference-file is ingested as a version of the model's dataset first; --follow waits for
    the validator's verdict on the imported version."""
    model = "bc_byom_file"
    frame = load_breast_cancer(as_frame=True).frame
    features = [c for c in frame.columns if c != "target"]
    reference = tmp_path / "reference.csv"
    frame.to_csv(reference, index=False)
    booster = lightgbm.LGBMClassifier(n_estimators=40, verbose=-1).fit(frame[features], frame["target"])
    model_file = tmp_path / "model.txt"
    booster.booster_.save_model(model_file)

    result = CliRunner().invoke(
        app,
        [
            "--home",
            str(stack.home),
            "models",
            "import",
            model,
            str(model_file),
            "--reference-file",
            str(reference),
            "--follow",
            "--timeout",
            str(CASCADE_TIMEOUT),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    imported = json.loads(result.output)
    assert imported["format"] == "lightgbm" and imported["monitored"] is True
    assert imported["reference"].startswith(f"{model}@")
    assert imported["parity_max_difference"] < 1e-4
    assert {gate["name"] for gate in imported["verdict"]["gates"]} >= {
        "onnx_parity",
        "schema",
        "no_regression",
    }
    version = _version(stack, model, version=imported["version"])
    assert version is not None and version.tags["format"] == "lightgbm"
    assert version.dataset_version == imported["reference"].split("@", 1)[1]
