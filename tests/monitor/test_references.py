from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest

from cascade.errors import FailedPrecondition, NotFound, Unavailable
from cascade.services.monitor.core import Unmonitored
from cascade.services.monitor.references import GrpcReferenceSource
from cascade.services.trainer.attribution import background_record

from .support import (
    DATASET,
    DATASET_VERSION,
    FEATURES,
    MODEL,
    Dependencies,
    normal_rows,
    parquet_of,
    unused_address,
)


@pytest.fixture
async def source(dependencies: Dependencies) -> AsyncIterator[GrpcReferenceSource]:
    source = GrpcReferenceSource(dependencies.address, dependencies.address, timeout_seconds=5.0)
    await source.open()
    yield source
    await source.close()


async def test_fetches_the_training_data_of_a_model_version(source: GrpcReferenceSource) -> None:
    reference = await source.fetch(MODEL, 1)

    assert reference.info.model == MODEL and reference.info.model_version == 1
    assert (reference.info.dataset, reference.info.dataset_version) == (DATASET, DATASET_VERSION)
    assert reference.info.features == tuple(FEATURES)  # the target column is left out
    assert reference.info.rows == 600
    np.testing.assert_array_equal(reference.rows, normal_rows(600, seed=1))


async def test_the_versions_explanation_background_comes_with_its_reference(
    source: GrpcReferenceSource, dependencies: Dependencies
) -> None:
    assert (await source.fetch(MODEL, 1)).background is None  # no tag: the monitor samples reference rows
    rows = normal_rows(30, seed=4)
    tag = background_record(list(FEATURES), rows)
    dependencies.registry.versions[MODEL, 1].tags["explain_background"] = tag
    reference = await source.fetch(MODEL, 1)
    assert reference.background is not None
    np.testing.assert_array_equal(reference.background.astype(np.float32), rows.astype(np.float32))


async def test_incomplete_rows_are_left_out(source: GrpcReferenceSource, dependencies: Dependencies) -> None:
    rows = normal_rows(10, seed=3)
    rows[2, 1] = np.nan
    dependencies.registry.add(MODEL, 2, DATASET, "with-gaps")
    dependencies.ingest.add(DATASET, "with-gaps", parquet_of(rows), FEATURES)

    reference = await source.fetch(MODEL, 2)

    assert reference.info.rows == 9
    np.testing.assert_array_equal(reference.rows, np.delete(rows, 2, axis=0))


async def test_an_unknown_model_version_is_not_found(source: GrpcReferenceSource) -> None:
    with pytest.raises(NotFound, match="registry"):
        await source.fetch(MODEL, 99)


async def test_a_version_imported_without_reference_is_unmonitored(
    source: GrpcReferenceSource, dependencies: Dependencies
) -> None:
    dependencies.registry.add(MODEL, 2, dataset="", dataset_version="")
    with pytest.raises(Unmonitored, match="imported without a reference dataset"):
        await source.fetch(MODEL, 2)


async def test_a_corrupt_download_is_refused(source: GrpcReferenceSource, dependencies: Dependencies) -> None:
    dependencies.registry.add(MODEL, 3, DATASET, "corrupt")
    dependencies.ingest.add(DATASET, "corrupt", parquet_of(normal_rows(50)), FEATURES, sha256="0" * 64)

    with pytest.raises(FailedPrecondition, match="corrupt"):
        await source.fetch(MODEL, 3)


async def test_an_unreachable_registry_is_unavailable(dependencies: Dependencies) -> None:
    source = GrpcReferenceSource(unused_address(), dependencies.address, timeout_seconds=5.0)
    await source.open()
    try:
        with pytest.raises(Unavailable, match="registry at"):
            await source.fetch(MODEL, 1)
    finally:
        await source.close()


async def test_an_unreachable_ingest_is_unavailable(dependencies: Dependencies) -> None:
    source = GrpcReferenceSource(dependencies.address, unused_address(), timeout_seconds=5.0)
    await source.open()
    try:
        with pytest.raises(Unavailable, match="ingest at"):
            await source.fetch(MODEL, 1)
    finally:
        await source.close()
