"""Turn a micro-batch of raw record values into one model-ready DataFrame plus dead letters.

Pure and total: whatever bytes arrive, :func:`decode_batch` returns; a record it cannot use
becomes a reject with a stable reason code, never an exception (one bad producer must not stop
the stream). The work is column-wise: each value is parsed once, then each feature column is
built with one list comprehension over the batch and checked with set/numpy operations, so the
per-record Python cost stays a handful of C-level calls.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from contracts.headers import ReasonCode
from contracts.schema import CategoricalFeature, FeatureSchema, NumericFeature

DEFAULT_MAX_RECORD_BYTES = 1024 * 1024
_DETAIL_CHARS = 200


class _NonFiniteLiteral:
    """What the JSON literals ``NaN``/``Infinity``/``-Infinity`` decode to.

    A marker instead of a float keeps them apart from ``null`` once a column becomes a float
    array (where both would be NaN): ``null`` may be an allowed missing value, ``NaN`` never is.
    """

    __slots__ = ("literal",)

    def __init__(self, literal: str) -> None:
        self.literal = literal


_LITERALS = {name: _NonFiniteLiteral(name) for name in ("NaN", "Infinity", "-Infinity")}
_NUMERIC_OK = frozenset({float, type(None)})
_CATEGORICAL_OK = frozenset({str, type(None)})
# Integers parse as floats: the column is float64 anyway, and a 400-digit integer then overflows
# to inf (rejected as not_finite) instead of tripping Python's int-digits limit.
_decoder = json.JSONDecoder(parse_int=float, parse_constant=_LITERALS.__getitem__)


@dataclass(frozen=True)
class Reject:
    """A record of the batch that goes to the DLQ: its position, reason code and a human hint."""

    index: int
    code: str
    detail: str


@dataclass(frozen=True)
class DecodedBatch:
    """Valid rows as one frame (schema column order), aligned with ``valid_indexes``."""

    frame: pd.DataFrame
    valid_indexes: list[int]
    """Position in the input batch of each frame row."""
    rejects: list[Reject] = field(default_factory=list)
    """Sorted by index; every input position is in exactly one of valid_indexes / rejects."""
    unknown_categories: int = 0
    """Categorical values (in valid rows) the training data never saw; the model ignores them."""
    extra_keys: int = 0
    """Keys (in valid rows) that are not features of the schema; ignored."""


def _type_name(value: Any) -> str:
    if isinstance(value, _NonFiniteLiteral):
        return value.literal
    return {str: "string", bool: "boolean", float: "number", dict: "object", list: "array"}.get(
        type(value), type(value).__name__
    )


def _short(text: str) -> str:
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 3] + "..."


def _parse(
    values: Sequence[bytes | None], max_record_bytes: int, rejects: dict[int, Reject]
) -> tuple[list[int], list[dict[str, Any]]]:
    """JSON-decode every value; returns (positions, objects) of those that are JSON objects."""
    positions: list[int] = []
    objects: list[dict[str, Any]] = []
    for i, value in enumerate(values):
        if not value:
            rejects[i] = Reject(i, ReasonCode.EMPTY, "record value is empty or null")
            continue
        if len(value) > max_record_bytes:
            rejects[i] = Reject(
                i, ReasonCode.TOO_LARGE, f"{len(value)} bytes > limit {max_record_bytes}"
            )
            continue
        try:
            obj = _decoder.decode(value.decode("utf-8"))
        except UnicodeDecodeError as exc:
            rejects[i] = Reject(i, ReasonCode.NOT_JSON, _short(f"not UTF-8: {exc}"))
            continue
        except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            rejects[i] = Reject(i, ReasonCode.NOT_JSON, _short(f"not JSON: {exc}"))
            continue
        if type(obj) is not dict:
            rejects[i] = Reject(
                i, ReasonCode.NOT_OBJECT, f"JSON {_type_name(obj)}, expected an object"
            )
            continue
        positions.append(i)
        objects.append(obj)
    return positions, objects


def _reject(rejects: dict[int, Reject], index: int, code: str, detail: str) -> None:
    """First problem found wins: one reason code per dead letter."""
    if index not in rejects:
        rejects[index] = Reject(index, code, detail)


def _numeric_column(
    feature: NumericFeature,
    column: list[Any],
    positions: list[int],
    rejects: dict[int, Reject],
) -> np.ndarray:
    name = feature.name
    if not set(map(type, column)) <= _NUMERIC_OK:  # slow path: only batches with a bad value
        for j, value in enumerate(column):
            if value is None or type(value) is float:
                continue
            if isinstance(value, _NonFiniteLiteral):
                _reject(
                    rejects, positions[j], ReasonCode.NOT_FINITE, f"{name!r} is {value.literal}"
                )
            else:
                _reject(
                    rejects,
                    positions[j],
                    ReasonCode.WRONG_TYPE,
                    f"{name!r} expects a number, got {_type_name(value)}",
                )
            column[j] = None
    array = np.array(column, dtype=np.float64)  # None -> NaN
    for j in np.flatnonzero(np.isinf(array)).tolist():
        _reject(rejects, positions[j], ReasonCode.NOT_FINITE, f"{name!r} overflows to infinity")
    if not feature.missing_seen:
        for j in np.flatnonzero(np.isnan(array)).tolist():
            _reject(
                rejects,
                positions[j],
                ReasonCode.MISSING_FEATURE,
                f"{name!r} is missing or null (never missing in training)",
            )
    return array


def _categorical_column(
    feature: CategoricalFeature,
    column: list[Any],
    positions: list[int],
    rejects: dict[int, Reject],
) -> list[Any]:
    name = feature.name
    if not set(map(type, column)) <= _CATEGORICAL_OK:
        for j, value in enumerate(column):
            if value is None or type(value) is str:
                continue
            _reject(
                rejects,
                positions[j],
                ReasonCode.WRONG_TYPE,
                f"{name!r} expects a string, got {_type_name(value)}",
            )
            column[j] = None
    if not feature.missing_seen and None in column:
        for j, value in enumerate(column):
            if value is None:
                _reject(
                    rejects,
                    positions[j],
                    ReasonCode.MISSING_FEATURE,
                    f"{name!r} is missing or null (never missing in training)",
                )
    return column


def empty_frame(schema: FeatureSchema) -> pd.DataFrame:
    """A zero-row frame with the dtypes a model of this schema expects."""
    return _frame(schema, {f.name: [] for f in schema.features}, np.arange(0))


def _frame(schema: FeatureSchema, columns: dict[str, Any], keep: np.ndarray) -> pd.DataFrame:
    data: dict[str, pd.Series] = {}
    for feature in schema.features:
        column = columns[feature.name]
        if isinstance(feature, NumericFeature):
            values = np.asarray(column, dtype=np.float64)[keep]
            data[feature.name] = pd.Series(values, dtype=np.float64)
        else:
            values = np.array(column, dtype=object)[keep]
            values[pd.isna(values)] = np.nan  # None -> NaN, what the imputers were fitted on
            # dtype=object: pandas 3 would otherwise infer its own string dtype
            data[feature.name] = pd.Series(values, dtype=object)
    return pd.DataFrame(data, columns=schema.names)


def decode_batch(
    values: Sequence[bytes | None],
    schema: FeatureSchema,
    *,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> DecodedBatch:
    """Validate ``values`` against ``schema``; never raises for any input bytes.

    Reason codes: None/empty → ``empty``; larger than ``max_record_bytes`` → ``too_large``; not
    UTF-8 or not JSON → ``not_json``; not a JSON object → ``not_object``; feature absent or null
    where training never saw it missing → ``missing_feature``; numeric feature not a number
    (booleans and numeric strings too) or categorical feature not a string → ``wrong_type``;
    NaN/±Infinity or a number overflowing to infinity → ``not_finite``. Unseen categories and
    extra keys are allowed and only counted.
    """
    rejects: dict[int, Reject] = {}
    positions, objects = _parse(values, max_record_bytes, rejects)
    columns: dict[str, Any] = {}
    for feature in schema.features:
        name = feature.name
        column = [obj.get(name) for obj in objects]
        if isinstance(feature, NumericFeature):
            columns[name] = _numeric_column(feature, column, positions, rejects)
        else:
            columns[name] = _categorical_column(feature, column, positions, rejects)

    keep_mask = np.fromiter((p not in rejects for p in positions), dtype=bool, count=len(positions))
    keep = np.flatnonzero(keep_mask)
    valid_indexes = [positions[j] for j in keep.tolist()]
    frame = _frame(schema, columns, keep)

    unknown = 0
    for feature in schema.features:
        if isinstance(feature, CategoricalFeature) and len(frame):
            column = frame[feature.name]
            unknown += int((column.notna() & ~column.isin(feature.categories)).sum())
    names = set(schema.names)
    extra = sum(len(objects[j].keys() - names) for j in keep.tolist())
    return DecodedBatch(
        frame=frame,
        valid_indexes=valid_indexes,
        rejects=[rejects[i] for i in sorted(rejects)],
        unknown_categories=unknown,
        extra_keys=extra,
    )
