"""Reading a user's CSV file: one set of checks and one wording for the trainer and the producer.

Both commands take ``--data FILE.csv`` from a person; a missing file, a directory, an unreadable
or empty file must read the same way in either, as one line (exit 2), never a pandas traceback.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from forestream.errors import UserError

if TYPE_CHECKING:
    import pandas as pd


def read_csv_file(path: Path) -> tuple[pd.DataFrame, bytes]:
    """The CSV as a frame with string column names, and its raw bytes (e.g. to hash them)."""
    import pandas as pd

    if not path.exists():
        raise UserError(f"data file {path} does not exist")
    if not path.is_file():
        raise UserError(f"data file {path} is not a file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read data file {path}: {exc.strerror or exc}") from None
    try:
        frame = pd.read_csv(io.BytesIO(raw))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a readable CSV file: {detail}") from None
    if frame.empty:
        raise UserError(f"{path} has a header but no data rows")
    frame.columns = [str(c) for c in frame.columns]
    return frame, raw
