"""The monitoring that plugs in: alert rules promtool accepts and tests, a Grafana dashboard.

Every metric the rules and the dashboard name must be one the node's /metrics
really exports, so a renamed metric fails here instead of leaving a silent panel.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[3]
MONITORING = REPO / "deploy" / "monitoring"
_METRIC = re.compile(r"\bdicom_node_[a-z_]+\b")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, cwd=MONITORING, check=False
    )


def test_alert_rules_are_valid_and_fire_when_they_must() -> None:
    checked = _promtool("check", "rules", "alerts.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 9 rules found" in checked.stdout
    # alerts.test.yaml: each alert fires on the series that must raise it, and only then.
    tested = _promtool("test", "rules", "alerts.test.yaml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_promtool_refuses_a_broken_rule(tmp_path: Path) -> None:
    broken = tmp_path / "alerts.yaml"
    broken.write_text((MONITORING / "alerts.yaml").read_text().replace("== 0", "=== 0", 1))
    result = subprocess.run(
        ["promtool", "check", "rules", str(broken)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0


def _exported(browser: TestClient) -> set[str]:
    """Every series name /metrics can carry (counters' _total, histograms' parts)."""
    answer = browser.get("/metrics")
    assert answer.status_code == 200
    names = set()
    for family in text_string_to_metric_families(answer.text):
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names.update(f"{family.name}_{part}" for part in ("bucket", "sum", "count"))
        names.update(sample.name for sample in family.samples)
    return names


def test_rules_and_dashboard_name_only_exported_metrics(admin: tuple[TestClient, str]) -> None:
    browser, _ = admin
    exported = _exported(browser)
    rules = set(_METRIC.findall((MONITORING / "alerts.yaml").read_text()))
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    queries = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in _METRIC.findall(target["expr"])
    }
    assert rules - exported == set()
    assert queries - exported == set()
    # What the issue asks the dashboard to show is there.
    for needed in ("dicom_node_instances_received_total", "dicom_node_queue_depth",
                   "dicom_node_job_stage_duration_seconds_bucket",
                   "dicom_node_job_failures_total", "dicom_node_exports_pending",
                   "dicom_node_spool_free_bytes"):  # fmt: skip
        assert needed in queries


def test_dashboard_is_importable_grafana_json() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["templating"]["list"][0]["type"] == "datasource"
    for panel in dashboard["panels"]:
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
