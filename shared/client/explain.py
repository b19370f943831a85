"""The typed client of serving's Explainer (cascade.explain.v1): per-prediction attributions of the
served version that answers, on serving's own port. Rows go as one FP64 [rows, features] tensor in
the model's feature order; the SDK (`AsyncClient.explain`) matches DataFrame columns by name first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cascade.client.base import ServiceClient
from cascade.client.calls import RemoteService, call
from cascade.client.records import Explained
from cascade.errors import InvalidArgument
from cascade.stubs.cascade.explain.v1 import explain_pb2 as pb
from cascade.stubs.cascade.explain.v1 import explain_pb2_grpc as pb_grpc

__all__ = ["ExplainClient", "Explained", "feature_rows"]


class ExplainClient(ServiceClient):
    """Serving's Explain RPC; failures are Cascade errors naming serving (Unavailable also when the
    explainer is busy: RESOURCE_EXHAUSTED, retry later)."""

    SERVICE = "serving"

    def __init__(self, service: RemoteService, *, timeout: float | None = None) -> None:
        super().__init__(service, timeout=timeout)
        self._stub = pb_grpc.ExplainerStub(service.channel)

    async def explain(
        self,
        model: str,
        rows: np.ndarray,
        *,
        version: str = "",
        output_class: int | None = None,
        max_rows: int = 0,
        max_evaluations: int = 0,
        deadline_seconds: float = 0.0,
        request_id: str = "",
    ) -> Explained:
        """Attributions of each of `rows` ([rows, features], or one row [features], in the model's
        feature order) to the output of `output_class` (None: each row's predicted class, or a
        regressor's value), by `version` (empty: the champion). The budget's zeros take serving's
        defaults; serving lowers larger ones to its limits."""
        values = np.asarray(rows, dtype=np.float64)
        if values.ndim == 1:
            values = values.reshape(1, -1)
        if values.ndim != 2:
            raise InvalidArgument(f"rows must be [rows, features]; got shape {list(values.shape)}")
        request = pb.ExplainRequest(
            model_name=model,
            model_version=version,
            input=pb.Tensor(
                name="input",
                datatype="FP64",
                shape=list(values.shape),
                raw_contents=np.ascontiguousarray(values, dtype="<f8").tobytes(),
            ),
            budget=pb.ExplainBudget(
                max_rows=max_rows, max_evaluations=max_evaluations, deadline_seconds=deadline_seconds
            ),
            id=request_id,
        )
        if output_class is not None:
            request.output_class = output_class
        # The call may take as long as the budget's deadline allows, beyond the client's usual bound.
        timeout = self.timeout
        if timeout is not None and deadline_seconds > 0:
            timeout = max(timeout, deadline_seconds + 10)
        response = await call(
            self.service,
            f"explaining {len(values)} row(s) of {model}",
            lambda: self._stub.Explain(request, timeout=timeout),
        )
        return Explained.of(response)


def feature_rows(
    model: str, features: Sequence[str], data: pd.DataFrame | Mapping[str, float] | np.ndarray
) -> np.ndarray:
    """`data` as [rows, features] in the model's feature order: a DataFrame's columns or a
    mapping's keys matched to `features` by name (others ignored); an array as it is."""
    if isinstance(data, np.ndarray):
        return data
    frame = pd.DataFrame([dict(data)]) if isinstance(data, Mapping) else data
    if not features:
        raise InvalidArgument(
            f"model {model!r} does not name its features, so columns cannot be matched to its input; "
            "pass a numpy array in the model's own column order"
        )
    missing = [feature for feature in features if feature not in frame.columns]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InvalidArgument(f"no value for feature(s) {shown} of model {model!r}")
    try:
        return frame[list(features)].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"every feature of {model!r} needs a number: {exc}") from None
