"""Processes that share one stderr (``worker --processes K``) never merge two log lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_CHILD = """
import structlog
from forestream.runtime.logs import configure_logging
configure_logging("json")
log = structlog.get_logger("t")
for i in range(3000):
    log.info("line", child=CHILD, i=i, padding="x" * 200)
"""


def test_two_processes_on_one_stderr_write_whole_lines(tmp_path: Path) -> None:
    sink_path = tmp_path / "shared.log"
    with sink_path.open("wb") as sink:
        children = [
            subprocess.Popen(
                [sys.executable, "-c", f"CHILD = {n}\n{_CHILD}"],
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
            for n in range(2)
        ]
        codes = [child.wait(timeout=60) for child in children]
    assert codes == [0, 0], sink_path.read_text()[-2000:]
    seen: dict[int, int] = {0: 0, 1: 0}
    for number, line in enumerate(sink_path.read_text().splitlines(), start=1):
        entry = json.loads(line)  # a merged line would not parse
        seen[entry["child"]] += 1
        assert entry["event"] == "line", f"line {number}: {line[:200]}"
    assert seen == {0: 3000, 1: 3000}
