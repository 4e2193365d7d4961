"""A real sklearn pipeline whose forest refuses marked rows: the model failure to isolate.

Shared by the scoring and processing tests. Marked rows are the only ones it cannot score, so a
test knows exactly which records must be dead-lettered as ``scoring_failed`` and which predicted.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import Pipeline

from tests.worker_support import CATEGORICAL, NUMERIC, fit_pipeline, make_frame

RAISES = 4242.0
"""An ``x1`` the forest raises for (with every other row of the call)."""
NAN = -4242.0
"""An ``x1`` the forest answers NaN probabilities for: unusable, like an exception."""


class RejectingForest(RandomForestClassifier):
    """A RandomForest that fails on rows whose first column (``x1`` after the
    ColumnTransformer) carries a marker, the way sklearn fails a whole call on one bad row."""

    def predict_proba(self, X: Any) -> np.ndarray:
        probabilities = super().predict_proba(X)
        first = (X.toarray() if hasattr(X, "toarray") else np.asarray(X))[:, 0]
        if (first == RAISES).any():
            raise ValueError(f"Input X contains a row the model rejects (x1={RAISES})")
        probabilities[first == NAN] = np.nan
        return probabilities


@cache
def rejecting_pipeline() -> Pipeline:
    """The trainer's pipeline shape (imputers, one-hot, forest) with :class:`RejectingForest`."""
    train = make_frame(300, seed=1)
    preprocess = fit_pipeline(train)[0]
    pipeline = Pipeline(
        [("pre", preprocess), ("rf", RejectingForest(n_estimators=10, random_state=0))]
    )
    return pipeline.fit(train[NUMERIC + CATEGORICAL], train["target"])
