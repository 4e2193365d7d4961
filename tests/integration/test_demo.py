"""``forestream demo --short``: the whole story end to end on the session's real broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("kafka_client")  # every test on both clients

ROOT = Path(__file__).resolve().parents[2]


def test_short_demo_accounts_for_every_record_and_tells_the_whole_story(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    command = [
        sys.executable, "-m", "forestream", "demo", "--short", "--json",
        "--workdir", str(tmp_path), "--bootstrap-servers", kafka_bootstrap,
    ]  # fmt: skip
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, f"demo failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    summary = json.loads(done.stdout[done.stdout.index("{") :])

    # nothing lost: every record is a prediction (one per key) or a dead letter
    assert summary["unaccounted"] == 0
    dead_letters = sum(summary["dead_letters"].values())
    assert summary["distinct_predicted_keys"] + dead_letters == summary["records_in"]
    # every malformed record sent is in the DLQ under its reason, and nothing else is
    assert summary["dead_letters"] == summary["malformed_sent"]
    assert set(summary["malformed_sent"]) >= {"not_json", "too_large", "wrong_type"}
    # v2 shadowed v1, and the evaluator promoted it by the rule on the same records' evidence
    [decision] = summary["decisions"]
    assert (decision["kind"], decision["version"]) == ("promoted", "v2"), decision
    assert decision["evidence"]["labelled"] >= 300 and decision["evidence"]["agreement"] >= 0.9
    shadow = summary["shadow"]["v2 vs v1"]
    assert shadow["labelled"] >= decision["evidence"]["labelled"]
    # then the workers served it: v1 first, then v2
    assert [v for v in summary["version_order"] if v in ("v1", "v2")][:2] == ["v1", "v2"]
    assert summary["versions_served"]["v1"] > 0 and summary["versions_served"]["v2"] > 0
    # the drifted feature, and only it, is flagged; the evaluator counted every label once
    assert summary["drift_flags"] == ["bill_length_mm"]
    online = summary["online_accuracy"]
    assert sum(v["labelled"] for v in online.values()) == summary["labels_sent"]
    assert summary["worker_exit_codes"] == [0, 0] and summary["evaluator_exit_code"] == 0
