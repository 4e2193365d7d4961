"""The benchmark page is generated from a results file, and says which file and when.

``bench.throughput`` writes ``latest.json`` beside its markdown; ``bench.report`` turns it into
``docs/benchmark.md`` and a chart. These tests hold the round trip (a results dict as the
benchmark builds it, rendered), the committed page being what the committed results file
renders to, and a clear refusal of a file that is not a results file.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench import report
from bench.throughput import Failed, Latency, Options, Results, Throughput, results_json
from tests.conftest import ROOT

RECORDED = ROOT / "bench" / "recorded" / "2026-12-03-run-c.json"


def _results() -> Results:
    opts = Options(
        records=1000, features=5, trees=3, latency_rate=100.0, latency_seconds=5.0,
        naive_records=100, train_rows=200, partitions=2, bootstrap_servers=None,
        output=Path("latest.md"),
    )  # fmt: skip
    res = Results(options=opts)
    res.passthrough = {"kafka-python": Throughput(1000, 0.5), "confluent": Throughput(1000, 0.1)}
    res.naive = Throughput(100, 1.0)
    res.worker = {"kafka-python": Throughput(1000, 1.0), "confluent": Failed("broker gone")}
    lat = Latency(100.0, 99.0, 500, [float(i) for i in range(500)], [i + 5.0 for i in range(500)])
    res.latency = {"kafka-python": lat}
    res.load = [(0.5, 0.4, 0.3), (0.6, 0.5, 0.4)]
    return res


def test_results_json_carries_the_table_and_the_figures_for_the_chart() -> None:
    data = results_json(_results(), written_at=datetime(2026, 12, 3, 10, 37, tzinfo=UTC))
    json.dumps(data)  # JSON-able as is
    assert data["schema"] == report.SCHEMA
    assert data["written_at"] == "2026-12-03T10:37:00+00:00"
    assert any(r["measurement"] == "(c) forestream worker, confluent" for r in data["rows"])
    phases = {(t["phase"], t["client"]) for t in data["throughput"]}
    assert ("worker", "kafka-python") in phases
    assert ("worker", "confluent") not in phases  # failed: a row says so, the chart leaves it out
    (worker,) = [x for x in data["latency"] if x["phase"] == "worker"]
    assert worker["p50_ms"] == pytest.approx(249.5) and worker["p99_ms"] > worker["p50_ms"]


def test_the_page_names_its_results_file_and_when_it_was_written(tmp_path: Path) -> None:
    source = tmp_path / "latest.json"
    data = results_json(_results(), written_at=datetime(2026, 12, 3, 10, 37, tzinfo=UTC))
    source.write_text(json.dumps(data))
    page = tmp_path / "benchmark.md"
    assert report.main([str(source), "--page", str(page), "--no-chart"]) == 0
    text = page.read_text()
    assert f"Results file `{source}`, written 2026-12-03T10:37:00+00:00" in text
    assert "Not a fresh run" not in text  # written by the benchmark: no provenance banner
    assert "| (b) naive per-record loop | 100 rec/s |" in text


def test_a_transcribed_results_file_is_marked_on_the_page() -> None:
    data = report.load(RECORDED)
    assert data["provenance"].startswith("Figures from 2026-12-03, transcribed from the run")
    text = report.markdown(data, RECORDED, Path("assets/benchmark.svg"))
    assert '!!! warning "Not a fresh run"' in text and data["provenance"] in text


def test_the_committed_page_is_what_the_committed_results_render_to() -> None:
    data = report.load(RECORDED)
    expected = report.markdown(data, RECORDED, Path("assets/benchmark.svg"))
    assert (ROOT / "docs" / "benchmark.md").read_text(encoding="utf-8") == expected


def test_the_chart_is_an_svg(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "chart.svg"
    report.write_chart(report.load(RECORDED), out)
    assert out.read_text().lstrip().startswith("<?xml") and "<svg" in out.read_text()


def test_not_a_results_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]")
    assert report.main([str(bad), "--no-chart", "--page", str(tmp_path / "p.md")]) == 2
    assert "not a bench.throughput results file" in capsys.readouterr().err
    assert report.main([str(tmp_path / "missing.json"), "--no-chart"]) == 2
    assert "run `make bench` first" in capsys.readouterr().err
