"""Training specs that would crash a JSON parser are refused as INVALID_ARGUMENT, over real gRPC."""

import grpc
import pytest

from shared.stubs.cascade.registry.v1 import registry_pb2 as pb
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
