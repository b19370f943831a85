"""The deterministic holdout split that trainer and validator agree on without talking.

A row is held out by a hash of its values, so the same row is always on the same side, whatever
version it appears in and however rows are ordered: the validator's "fresh data" is data the
candidate never trained on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["holdout_mask"]


def holdout_mask(frame: pd.DataFrame, fraction: float = 0.2) -> np.ndarray:
    hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)
    return (hashes % np.uint64(10_000)) < np.uint64(int(fraction * 10_000))
