"""What one scored micro-batch looks like to everything that watches the stream.

The scoring loop builds one :class:`ScoredBatch` per batch and hands it to each
:class:`BatchObserver` (metrics, drift, online evaluation). Observers work per batch with numpy,
never per record in Python, and must not raise: a monitoring bug must not stop scoring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class ScoredBatch:
    model_version: str
    classes: list[str]
    frame: pd.DataFrame
    """Valid rows only, columns in schema order (numeric float64 with NaN, categorical object)."""
    keys: list[bytes | None]
    """Record keys of the valid rows, aligned with ``frame``."""
    predictions: np.ndarray
    """Predicted class label (str) per valid row."""
    probabilities: np.ndarray
    """Shape (rows, len(classes)), aligned with ``classes``."""
    event_times_ms: np.ndarray
    """Input record timestamps (ms) of the valid rows."""
    scored_at_ms: int
    reject_codes: list[str]
    """Reason code of every record of the batch that went to the DLQ."""
    records_in: int
    """All records of the batch: valid + rejected."""
    unknown_categories: int = 0
    extra_keys: int = 0
    predict_seconds: float = 0.0
    engine: str = "sklearn"
    """Which engine computed ``probabilities`` (:mod:`forestream.worker.forest_engine`)."""


class BatchObserver(Protocol):
    def on_batch(self, batch: ScoredBatch) -> None: ...
