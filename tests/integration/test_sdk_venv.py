"""Issue 17's proof: the SDK installed into a fresh venv with only its own dependencies (pip may use
the network) holds no services' libraries and no top-level `shared`, `services` or `inference`;
from there, a script drives a whole cascade on the real stack and predicts from a DataFrame whose
columns are shuffled, and its answers are what tritonclient gets from the served model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from cascade.stack import SERVICES, Stack
from tests.integration.support import infer

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SERVICE_LIBRARIES = ["faststream", "aiokafka", "optuna", "skl2onnx", "onnxruntime", "sklearn", "sqlalchemy"]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import pandas as pd
    from cascade import Client

    addresses, frame_path, model = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    frame = pd.read_csv(frame_path)
    with Client(addresses) as client:
        upload = client.upload(frame, model)
        version = client.follow(upload.dataset_version, model, wait_seconds=240)
        features = frame.drop(columns="target")
        shuffled = features[list(np.random.default_rng(3).permutation(features.columns))]
        prediction = client.predict(model, shuffled.iloc[:40])
    print(json.dumps({"version": version.version, "served": prediction.version,
                      "labels": prediction["label"].tolist()}))
    """
)


@pytest.fixture(scope="module")
def sdk_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    venv = tmp_path_factory.mktemp("sdk") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(REPO)], check=True, timeout=900)
    yield python


def _sdk_environment(stack: Stack) -> dict[str, str]:
    """The stack's credentials as a user gives them to the SDK: through the environment."""
    security = stack.client_security
    environ = {"PATH": os.environ.get("PATH", ""), "CASCADE_TOKEN": security.token}
    for name, path in (
        ("CASCADE_TLS_CA_FILE", security.ca_file),
        ("CASCADE_TLS_CERT_FILE", security.cert_file),
        ("CASCADE_TLS_KEY_FILE", security.key_file),
    ):
        if path is not None:
            environ[name] = str(path)
    return environ


def test_the_sdk_venv_holds_only_the_sdk(sdk_python: Path) -> None:
    purelib = subprocess.run(
        [str(sdk_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    names = {path.name.split(".")[0] for path in Path(purelib).iterdir()}
    assert "cascade" in names
    assert names.isdisjoint({"shared", "services", "inference"})
    assert names.isdisjoint(SERVICE_LIBRARIES)
    assert sysconfig.get_paths()["purelib"] != purelib  # not this test's own environment


def test_a_script_in_the_sdk_venv_drives_a_cascade_and_predicts_by_column_name(
    sdk_python: Path, stack: Stack, tmp_path: Path
) -> None:
    model = "sdk_venv"
    frame = load_breast_cancer(as_frame=True).frame.sample(frac=1.0, random_state=9).reset_index(drop=True)
    frame_path = tmp_path / "batch.csv"
    frame.to_csv(frame_path, index=False)
    addresses = {name: stack.address(name) for name in SERVICES}

    run = subprocess.run(
        [str(sdk_python), "-c", SCRIPT, json.dumps(addresses), str(frame_path), model],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env=_sdk_environment(stack),
        cwd=tmp_path,  # not the repo: the venv's own install is what is imported
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])

    assert result["served"] == str(result["version"])
    served_version, labels = infer(stack, model, frame.drop(columns="target").iloc[:40].to_numpy(np.float32))
    assert served_version == result["served"]
    np.testing.assert_array_equal(np.array(result["labels"]), labels)
