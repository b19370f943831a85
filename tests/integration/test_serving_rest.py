"""Serving's KServe V2 REST endpoint on the real stack: started by `cascade up`'s launcher one port
below serving's gRPC port, answering a model the real cascade trained, as gRPC answers it."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from cascade.stack import Stack
from tests.integration.support import infer, model_ready, upload, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

MODEL = "bc_rest"


def test_rest_answers_the_cascaded_model_by_feature_name_as_grpc_does(stack: Stack) -> None:
    frame = load_breast_cancer(as_frame=True).frame
    response, _ = upload(stack, MODEL, frame)
    assert response.created
    wait_for(lambda: model_ready(stack, MODEL, "1"), 120, "serving to load version 1")
    rows = frame.drop(columns="target").to_numpy(np.float32)[:6]
    _, grpc_labels = infer(stack, MODEL, rows)

    with httpx.Client(base_url=f"http://127.0.0.1:{stack.rest_port()}", timeout=30) as http:
        assert http.get("/v2/health/ready").json() == {"ready": True}
        assert http.get(f"/v2/models/{MODEL}/versions/1/ready").status_code == 200
        metadata = http.get(f"/v2/models/{MODEL}").json()
        (tensor,) = metadata["inputs"]
        # The trainer's column order, from the registry's tag, on the wire.
        names = json.loads(tensor["parameters"]["feature_names"])
        assert names == [str(column) for column in frame.columns if column != "target"]

        single = {"name": "input", "shape": [6, 30], "datatype": "FP32", "data": rows.ravel().tolist()}
        answer = http.post(f"/v2/models/{MODEL}/infer", json={"inputs": [single]})
        assert answer.status_code == 200
        labels = {o["name"]: o["data"] for o in answer.json()["outputs"]}["label"]
        np.testing.assert_array_equal(labels, grpc_labels)

        by_name = [
            {"name": name, "shape": [6], "datatype": "FP64", "data": rows[:, index].tolist()}
            for index, name in enumerate(names)
        ]
        per_feature = http.post(f"/v2/models/{MODEL}/infer", json={"inputs": by_name[::-1]})
        assert per_feature.status_code == 200
        assert per_feature.json()["outputs"] == answer.json()["outputs"]

        unknown = http.post(f"/v2/models/{MODEL}/infer", json={"inputs": [{**by_name[0], "name": "radius"}]})
        assert unknown.status_code == 400
        assert "unknown input 'radius'" in unknown.json()["error"]
