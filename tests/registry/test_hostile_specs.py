"""Hostile input over real gRPC: training specs that would crash a JSON parser, and a 10 MB name, are
INVALID_ARGUMENT with a short message (not INTERNAL or RESOURCE_EXHAUSTED)."""

import grpc
import pytest

from cascade.errors import MAX_STATUS_MESSAGE_BYTES
from cascade.stubs.cascade.registry.v1 import registry_pb2 as pb
from tests.registry.test_registry_api import Registry, registry  # noqa: F401  (the fixture)


@pytest.mark.parametrize(
    ("spec_json", "said"),
    [
        ("[" * 5000 + "]" * 5000, "5000 levels deep"),
        ('{"a": ' * 100_000 + "1" + "}" * 100_000, "over the limit"),
        ('{"trials": 3, "note": "' + "x" * (2 * 1024 * 1024) + '"}', "over the limit of 1048576"),
    ],
)
async def test_deep_or_huge_specs_are_invalid_arguments_with_a_short_message(
    registry: Registry,  # noqa: F811
    spec_json: str,
    said: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await registry.stub.SetTrainingSpec(pb.SetTrainingSpecRequest(model="m", spec_json=spec_json))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert said in (refused.value.details() or "")


async def test_a_spec_within_the_limits_is_stored(registry: Registry) -> None:  # noqa: F811
    spec = await registry.stub.SetTrainingSpec(
        pb.SetTrainingSpecRequest(model="m", spec_json='{"trials": 3}')
    )
    assert spec.version == 1


async def test_a_10_mb_name_is_an_invalid_argument_with_a_short_message(registry: Registry) -> None:  # noqa: F811
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await registry.stub.GetModel(pb.GetModelRequest(name="n" * (10 * 1024 * 1024)), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert details.startswith("invalid model name 'nnnn")
    assert details.endswith(" bytes in all)") and len(details.encode()) <= MAX_STATUS_MESSAGE_BYTES
