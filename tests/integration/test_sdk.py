"""The SDK (`from cascade import Client`) drives a whole cascade on the real stack: upload a batch,
follow it to a served champion, and predict from a DataFrame whose columns are shuffled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from cascade import Client
from cascade.stack import SERVICES, Stack
from tests.integration.support import infer

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_upload_follow_and_predict_by_column_name(stack: Stack) -> None:
    model = "sdk_cascade"
    frame = load_breast_cancer(as_frame=True).frame.sample(frac=1.0, random_state=5).reset_index(drop=True)
    addresses = {name: stack.address(name) for name in SERVICES}

    with Client(addresses, security=stack.client_security) as client:
        upload = client.upload(frame, model)
        assert upload.created and upload.report.rows_accepted == len(frame)

        version = client.follow(upload.dataset_version, model, wait_seconds=240)

        assert version.validation_passed and "champion" in version.aliases
        assert version.dataset_version == upload.dataset_version
        assert model in [m.name for m in client.list_models()]
        assert client.lineage(model, version.version).dataset_version == upload.dataset_version
        features = frame.drop(columns="target")
        shuffled = features[list(np.random.default_rng(11).permutation(features.columns))]
        prediction = client.predict(model, shuffled.iloc[:50])

    assert prediction.version == str(version.version)
    served_version, labels = infer(stack, model, features.iloc[:50].to_numpy(np.float32))
    assert served_version == prediction.version
    np.testing.assert_array_equal(prediction["label"], labels)


README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_sdk_example_runs(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    section = README.read_text().split("### Python SDK", 1)[1].split("\n### ", 1)[0]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    # The example aims at `cascade up`'s ports; the suite's stack listens on others.
    assert example.count("Client()") == 1
    example = example.replace("Client()", "Client(ADDRESSES, security=SECURITY)")
    addresses = {name: stack.address(name) for name in SERVICES}

    exec(compile(example, "README.md", "exec"), {"ADDRESSES": addresses, "SECURITY": stack.client_security})

    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("v1 is champion, trained on ")
    assert printed[1].startswith("[") and "]" in printed[1]  # five labels, then their probabilities
    assert "breast_cancer" in printed[-2]
    assert (printed[-1].startswith("(") and "batch-" in printed[-1]) or printed[-1].startswith("('")
