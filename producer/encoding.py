"""Turn table rows into the input wire format: one compact UTF-8 JSON object per record.

Numbers stay JSON numbers, missing values (NaN, None, pandas NA) become ``null``, strings stay
strings. numpy scalars are unwrapped so ``json`` never sees a type it cannot write.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

JsonScalar = str | int | float | bool | None


def json_value(value: Any) -> JsonScalar:
    """One cell as a JSON-ready Python scalar; NaN and ±inf become ``None``.

    Infinity is not JSON, and a CSV cell reading ``inf`` is a data problem the worker would
    reject anyway; sending ``null`` keeps the record valid JSON and lets the schema decide.
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    item = getattr(value, "item", None)  # numpy scalar -> Python scalar
    if item is not None:
        return json_value(item())
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def clean_row(row: Mapping[str, Any]) -> dict[str, JsonScalar]:
    return {str(name): json_value(value) for name, value in row.items()}


def encode_row(row: Mapping[str, Any]) -> bytes:
    """The record value for ``row``: compact JSON, ``allow_nan=False`` so no ``NaN`` leaks out.

    Rows from :func:`frame_rows` and the synthetic source are clean already, so they are dumped
    as they are; only a row ``json`` refuses (NaN, ±inf, numpy or pandas scalars) is cleaned.
    """
    if all(type(name) is str for name in row):  # other keys: json would spell them its own way
        try:
            return json.dumps(row, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError):
            pass
    return json.dumps(clean_row(row), separators=(",", ":"), allow_nan=False).encode()


def frame_rows(frame: pd.DataFrame) -> list[dict[str, JsonScalar]]:
    """Every row of ``frame`` as a clean dict, converted column-wise once (not per send)."""
    columns: dict[str, list[JsonScalar]] = {
        str(name): [json_value(v) for v in frame[name].tolist()] for name in frame.columns
    }
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]
