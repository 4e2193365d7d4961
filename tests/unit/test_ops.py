"""The operations kit against the code: every metric it queries exists, the rules are valid.

``ops/grafana/forestream-dashboard.json`` and ``ops/prometheus/alerts.yml`` query a worker's
metrics by name; a renamed metric would leave a panel empty or an alert that can never fire,
silently. The exported names are read from a real worker's registry (the one ``start_telemetry``
builds, with the monitoring gauges a worker adds to it), not from the source by regex.

The rules are checked with ``promtool check rules`` and their firing with ``promtool test
rules ops/prometheus/alerts_test.yml`` where promtool is installed (Debian's ``prometheus``
package); a structural check runs everywhere.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from forestream.worker.health import HealthState, ReadinessCollector, start_telemetry
from forestream.worker.monitoring import MonitoringGauges
from tests.conftest import ROOT

OPS = ROOT / "ops"
DASHBOARD = OPS / "grafana" / "forestream-dashboard.json"
RULES = OPS / "prometheus" / "alerts.yml"
RULE_TESTS = OPS / "prometheus" / "alerts_test.yml"
OPERATIONS_PAGE = ROOT / "docs" / "operations.md"
PROMETHEUS_OWN = {"up"}
"""Series Prometheus makes itself for every target."""

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported_metric_names() -> set[str]:
    """Every sample name a worker's /metrics can carry, from the registry it serves."""
    telemetry = start_telemetry(port=None)
    MonitoringGauges(telemetry.metrics.registry)  # what StreamMonitoring adds to that registry
    names: set[str] = set()
    for family in telemetry.metrics.registry.collect():
        names.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
    return names


def _metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (label values and matchers removed)."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings: label values, legend text
    bare = re.sub(r"\{[^}]*\}", "", bare)  # label matchers
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare))
    return {w for w in words if w.startswith("forestream_") or w in PROMETHEUS_OWN}


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for key in ("query", "definition"):
                if isinstance(node.get(key), str) and "(" in node[key]:
                    exprs.append(node[key])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(board)
    return exprs


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_the_name_parser_sees_through_matchers_and_grouping() -> None:
    expr = 'sum by (reason) (rate(forestream_x_total{reason="up", a=~"b"}[5m])) / up{job="j"}'
    assert _metric_names(expr) == {"forestream_x_total", "up"}


def test_every_metric_the_dashboard_queries_is_exported_by_a_worker() -> None:
    exported = exported_metric_names() | PROMETHEUS_OWN
    used = {name for expr in dashboard_exprs() for name in _metric_names(expr)}
    assert len(used) >= 12, used  # the parser found the panels' metrics
    assert not used - exported, f"dashboard queries metrics no worker exports: {used - exported}"


def test_every_metric_the_alert_rules_use_is_exported_by_a_worker() -> None:
    exported = exported_metric_names() | PROMETHEUS_OWN
    used = {name for rule in rules() for name in _metric_names(rule["expr"])}
    assert {"forestream_consumer_lag_records", "forestream_ready", "up"} <= used
    assert not used - exported, f"rules use metrics no worker exports: {used - exported}"


def test_the_dashboard_has_a_panel_for_each_thing_an_operator_watches() -> None:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert board["uid"] == "forestream"
    panels = [p for p in board["panels"] if p["type"] != "row"]
    text = " ".join(json.dumps(p["targets"]) for p in panels)
    for metric in (
        "forestream_records_consumed_total",  # throughput
        "forestream_records_dead_lettered_total",  # DLQ by reason
        "forestream_consumer_lag_records",  # lag per partition
        "forestream_end_to_end_latency_seconds_bucket",  # latency percentiles
        "forestream_batch_size_records_bucket",  # batch sizes
        "forestream_model_version_info",  # model version per worker
        "forestream_model_reload_failures_total",  # reload failures
        "forestream_feature_drifting",  # drift flags
    ):
        assert metric in text, metric
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:  # every query goes to the chosen data source
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_rules_are_well_formed_and_each_has_a_runbook_section() -> None:
    """The structural check that runs without promtool."""
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    assert set(doc) == {"groups"}
    page = OPERATIONS_PAGE.read_text(encoding="utf-8")
    headings = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", page, re.MULTILINE)
    }
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names)) >= 5
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"Forestream[A-Za-z]+", rule["alert"])
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        notes = rule["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(notes), rule["alert"]
        anchor = notes["runbook_url"].split("#", 1)[1]
        assert notes["runbook_url"].split("#", 1)[0].endswith("/operations/"), rule["alert"]
        assert anchor == rule["alert"].lower() and anchor in headings, rule["alert"]


def test_the_brief_s_alerts_are_all_there() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in rules()}
    assert "deriv(" in exprs["ForestreamConsumerLagGrowing"]  # growing, not merely high
    assert "forestream_records_dead_lettered_total" in exprs["ForestreamDeadLetterShareHigh"]
    assert "forestream_ready" in exprs["ForestreamWorkerNotReady"]
    assert "forestream_model_reload_failures_total" in exprs["ForestreamModelReloadFailing"]
    assert "forestream_feature_drifting" in exprs["ForestreamFeatureDrift"]


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_accepts_the_rules_and_the_config(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # the compose config names the rules by their path in the container: point it here
    config = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    config["rule_files"] = [str(RULES)]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    checked = subprocess.run(
        [PROMTOOL, "check", "config", str(local)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
def test_each_alert_fires_on_its_series_and_not_on_a_healthy_one() -> None:
    assert PROMTOOL is not None
    tested = subprocess.run(
        [PROMTOOL, "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=RULE_TESTS.parent,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    cases = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    covered = {t["alertname"] for case in cases for t in case["alert_rule_test"]}
    assert covered == {rule["alert"] for rule in rules()}


def test_readiness_is_exported_as_metrics() -> None:
    state = HealthState()
    collector = ReadinessCollector(state)

    def samples() -> dict[tuple[str, str], float]:
        return {
            (s.name, s.labels.get("part", "")): s.value
            for family in collector.collect()
            for s in family.samples
        }

    assert samples() == {
        ("forestream_ready", ""): 0.0,
        ("forestream_ready_missing", "model"): 1.0,
        ("forestream_ready_missing", "partitions"): 1.0,
    }
    state.set_model("v1")
    state.set_assignment([0, 1])
    assert samples()[("forestream_ready", "")] == 1.0
    assert samples()[("forestream_ready_missing", "model")] == 0.0
    telemetry = start_telemetry(port=None)  # the worker's registry carries it
    text = telemetry.metrics.render().decode()
    assert "forestream_ready 0.0" in text
    assert 'forestream_ready_missing{part="partitions"} 1.0' in text
