"""Where rows come from: a CSV file, or a model's schema (synthetic records).

Everything that can be wrong with the user's input (missing file, not a CSV, unknown column,
unknown model) is found here, before anything is sent, and reported as one-line UserError.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from forestream.errors import UserError
from forestream.producer.encoding import JsonScalar, frame_rows
from forestream.wire.csv_files import read_csv_file

if TYPE_CHECKING:
    from forestream.wire.schema import FeatureSchema, ReferenceStats


@dataclass
class CsvSource:
    rows: list[dict[str, JsonScalar]]
    keys: list[str] | None
    numeric: list[str]
    """Numeric columns."""
    complete: list[str]
    """Columns with no missing value: what a model trained on this file would require."""
    stds: dict[str, float] = field(default_factory=dict)
    """Standard deviation of each numeric column (``--shift`` without a model)."""

    def shift(self, shifts: dict[str, float]) -> None:
        """Move each named numeric column by k of its own standard deviations, in place."""
        for name, k in shifts.items():
            if name not in self.numeric:
                raise UserError(f"--shift: {name!r} is not a numeric column of the data")
            delta = k * (self.stds.get(name) or 0.0)
            for row in self.rows:
                value = row[name]
                if isinstance(value, int | float) and not isinstance(value, bool):
                    row[name] = value + delta

    def stream(self, loop: bool) -> Iterator[tuple[str | None, dict[str, JsonScalar]]]:
        keyed = zip(self.keys or itertools.repeat(None), self.rows, strict=False)
        if not loop:
            yield from keyed
            return
        while True:
            yield from zip(self.keys or itertools.repeat(None), self.rows, strict=False)


def load_csv(
    path: Path, target: str | None, drop: Sequence[str], key_column: str | None
) -> CsvSource:
    """Read ``path``; drop ``target`` if present and every ``drop`` column (which must exist).

    The key column becomes the record key and is not sent in the value: it identifies the
    record, it is not a feature.
    """
    import pandas as pd

    frame, _ = read_csv_file(path)
    columns = list(frame.columns)
    missing = [c for c in [*drop, *([key_column] if key_column else [])] if c not in columns]
    if missing:
        raise UserError(f"{path} has no column {missing[0]!r} (columns: {', '.join(columns)})")
    keys = None
    if key_column:
        key_series = frame[key_column]
        if key_series.isna().any():
            raise UserError(f"key column {key_column!r} has empty cells")
        keys = [str(v) for v in key_series.tolist()]
    removed = {*drop, *([key_column] if key_column else [])}
    if target and target in columns:
        removed.add(target)
    frame = frame.drop(columns=sorted(removed))
    if frame.shape[1] == 0:
        raise UserError(f"{path} has no feature columns left after dropping {sorted(removed)}")
    numeric = [
        c
        for c in frame.columns
        if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
    ]
    complete = [c for c in frame.columns if not frame[c].isna().any()]
    stds = {c: float(frame[c].std()) for c in numeric}
    return CsvSource(frame_rows(frame), keys, numeric, complete, stds)


@dataclass(frozen=True)
class ModelInputs:
    name: str
    version: str
    schema: FeatureSchema
    reference: ReferenceStats | None


def load_model_inputs(
    store_root: Path | str, name: str, version: str | None, *, endpoint_url: str | None = None
) -> ModelInputs:
    """Schema and reference stats of ``name`` at ``version`` (default: the served version)."""
    try:
        from forestream.registry.open import open_store
    except ImportError:
        raise UserError("the model registry is not available in this build") from None
    store = open_store(store_root, endpoint_url=endpoint_url)
    try:
        if version is None:
            served = store.served(name)
            version = getattr(served, "version", served)
            if not version:
                raise UserError(
                    f"model {name!r} has no served version in {store_root}; "
                    "pass --version or promote one"
                )
        meta = store.metadata(name, str(version))
    except UserError:
        raise
    except (OSError, KeyError, ValueError, LookupError) as exc:
        raise UserError(
            f"cannot read model {name!r} version {version} from {store_root}: {exc}"
        ) from None
    return ModelInputs(name, str(version), meta.feature_schema, getattr(meta, "reference", None))


def parse_shifts(specs: Sequence[str]) -> dict[str, float]:
    """``["x=1.5", "y=-2"]`` -> ``{"x": 1.5, "y": -2.0}`` (standard deviations, finite)."""
    shifts: dict[str, float] = {}
    for spec in specs:
        name, sep, amount = spec.partition("=")
        try:
            if not sep or not name.strip() or not math.isfinite(float(amount)):
                raise ValueError
            shifts[name.strip()] = float(amount)
        except ValueError:
            raise UserError(
                f"--shift expects FEATURE=K (K in standard deviations), got {spec!r}"
            ) from None
    return shifts
