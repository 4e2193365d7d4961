"""The demo dataset: Palmer penguins, shipped inside the ``palmerpenguins`` wheel (no download).

Real measurements with categoricals (island, sex) and missing values: a fair small test of the
whole path from CSV to streamed predictions.
"""

from __future__ import annotations

from pathlib import Path

from forestream.errors import UserError

PENGUINS_TARGET = "species"


def write_penguins_csv(path: Path | str) -> Path:
    """Write the penguins CSV to ``path`` (parents created) and return the path."""
    from palmerpenguins import load_penguins

    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        load_penguins().to_csv(out, index=False)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror}") from None
    return out
