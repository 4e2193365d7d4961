"""Realistic bad records, one per reason code the worker must dead-letter.

Each is derived from a valid row so it looks like what a real upstream bug produces (a cut-off
write, a list instead of an object, a dropped column, a stringly-typed number, ...). The reason
a worker should give is the matching :class:`forestream.wire.headers.ReasonCode`.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from forestream.producer.encoding import clean_row, encode_row
from forestream.wire.headers import ReasonCode

MAX_VALUE_BYTES = 1024 * 1024
"""The worker's limit on a record value; ``too_large`` records exceed it."""

MALFORMED_KINDS: tuple[str, ...] = (
    ReasonCode.NOT_JSON,
    ReasonCode.NOT_OBJECT,
    ReasonCode.MISSING_FEATURE,
    ReasonCode.WRONG_TYPE,
    ReasonCode.NOT_FINITE,
    ReasonCode.OUT_OF_RANGE,
    ReasonCode.TOO_LARGE,
    ReasonCode.EMPTY,
)
"""The kinds the producer mixes in, in turn (SCORING_FAILED is worker-side)."""


def malformed_value(
    kind: str,
    row: Mapping[str, Any],
    required: Sequence[str],
    numeric: Sequence[str],
    pick: int = 0,
) -> bytes:
    """A record value of ``kind`` derived from the valid ``row``.

    ``required`` are features the model cannot do without (dropping one must be rejected);
    ``numeric`` are required numeric features (a string or NaN there must be rejected).
    ``pick`` chooses which of them to spoil, so repeated records vary.
    """
    clean = clean_row(row)
    if kind == ReasonCode.NOT_JSON:
        whole = encode_row(clean)
        return whole[: max(1, len(whole) // 2)]  # a proper prefix of an object is never JSON
    if kind == ReasonCode.NOT_OBJECT:
        return json.dumps(list(clean.values()), separators=(",", ":")).encode()
    if kind == ReasonCode.MISSING_FEATURE:
        if not required:
            raise ValueError("no required feature to drop")
        name = required[pick % len(required)]
        return encode_row({k: v for k, v in clean.items() if k != name})
    if kind == ReasonCode.WRONG_TYPE:
        if not numeric:
            raise ValueError("no numeric feature to spoil")
        return encode_row({**clean, numeric[pick % len(numeric)]: "n/a"})
    if kind == ReasonCode.NOT_FINITE:
        if not numeric:
            raise ValueError("no numeric feature to spoil")
        spoilt = {**clean, numeric[pick % len(numeric)]: float("nan")}
        return json.dumps(spoilt, separators=(",", ":"), allow_nan=True).encode()
    if kind == ReasonCode.OUT_OF_RANGE:  # finite, but beyond float32, which the forest uses
        if not numeric:
            raise ValueError("no numeric feature to spoil")
        return encode_row({**clean, numeric[pick % len(numeric)]: 1e300})
    if kind == ReasonCode.TOO_LARGE:
        # a runaway free-text field; compressible, so the broker's own 1 MiB limit is not hit
        return encode_row({**clean, "comment": "x" * (MAX_VALUE_BYTES + 1)})
    if kind == ReasonCode.EMPTY:
        return b""
    raise ValueError(f"unknown malformed kind {kind!r}")


def possible_kinds(required: Sequence[str], numeric: Sequence[str]) -> tuple[str, ...]:
    """The kinds that can be made for a schema (no numeric feature: none of the numeric kinds)."""
    kinds = list(MALFORMED_KINDS)
    if not required:
        kinds.remove(ReasonCode.MISSING_FEATURE)
    if not numeric:
        kinds.remove(ReasonCode.WRONG_TYPE)
        kinds.remove(ReasonCode.NOT_FINITE)
        kinds.remove(ReasonCode.OUT_OF_RANGE)
    return tuple(kinds)


class MalformedMixer:
    """Decides which output slots carry a bad record, and makes it: exactly ``share`` of them.

    An error accumulator (not a coin flip) spaces bad records evenly and makes counts exact,
    which is what a demo or a test that accounts for every record needs.
    """

    def __init__(
        self, share: float, required: Sequence[str], numeric: Sequence[str], seed: int = 0
    ) -> None:
        if not 0.0 <= share < 1.0:
            raise ValueError("share must be in [0, 1)")
        self.share = share
        self.required = list(required)
        self.numeric = list(numeric)
        self.kinds = possible_kinds(self.required, self.numeric)
        self._rng = random.Random(seed)
        self._slots = 0
        self._bad = 0
        self._made = 0

    def next_is_malformed(self) -> bool:
        # counts, not a running float sum: 10 x 0.1 must reach exactly 1 bad record
        self._slots += 1
        if self._bad < math.floor(self._slots * self.share + 1e-9):
            self._bad += 1
            return True
        return False

    def make(self, row: Mapping[str, Any]) -> tuple[str, bytes]:
        """The next kind in turn and its value, derived from ``row``."""
        kind = self.kinds[self._made % len(self.kinds)]
        self._made += 1
        return kind, malformed_value(
            kind, row, self.required, self.numeric, pick=self._rng.randrange(1 << 30)
        )
