"""files/prometheus/rules: every expression reads only contract metrics or our own recorded series,
every alert carries what an on-call needs (severity, summary, description, a runbook section that
exists), and every alert and recording rule has a promtool test (tests/promtool/)."""

from __future__ import annotations

import re

import pytest
import yaml
from monitoring_contract import PROMETHEUS_SERIES, PROMTOOL_TESTS_DIR, RULES_DIR, RUNBOOKS, contract, metric_names

RULE_FILES = sorted(RULES_DIR.glob("*.yml"))


def _rules() -> list[dict]:
    out = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.extend(group["rules"])
    return out


RULES = _rules()
ALERTS = [r for r in RULES if "alert" in r]
RECORDS = [r for r in RULES if "record" in r]


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    anchors = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def _promtool_tests() -> list[dict]:
    tests = []
    for path in sorted(PROMTOOL_TESTS_DIR.glob("*.test.yml")):
        tests.extend(yaml.safe_load(path.read_text())["tests"])
    return tests


def test_there_are_rules() -> None:
    assert [p.name for p in RULE_FILES] == ["durable-mx-alerts.yml", "durable-mx-slo.yml"]
    assert len(ALERTS) >= 15 and len(RECORDS) == 6


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.get("alert") or r["record"])
def test_rule_reads_only_contract_metrics_or_recorded_series(rule: dict) -> None:
    allowed = contract() | PROMETHEUS_SERIES | {r["record"] for r in RECORDS}
    names = metric_names(rule["expr"])
    assert names
    assert not names - allowed, f"not in files/prometheus/metrics.txt nor recorded: {sorted(names - allowed)}"


@pytest.mark.parametrize("alert", ALERTS, ids=lambda r: r["alert"])
def test_alert_has_severity_text_and_runbook(alert: dict) -> None:
    assert alert["labels"]["severity"] in {"page", "ticket"}
    annotations = alert["annotations"]
    assert annotations["summary"] and annotations["description"]
    assert "{{" in annotations["description"], "the description should show the measured value or the labels"
    runbook = annotations["runbook"]
    assert runbook == f"docs/runbooks.md#{alert['alert'].lower()}"
    assert runbook.split("#", 1)[1] in _anchors(RUNBOOKS.read_text()), f"no section {runbook}"


def test_every_alert_is_tested_firing_and_quiet() -> None:
    fired, quiet = set(), set()
    for test in _promtool_tests():
        for case in test.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {a["alert"] for a in ALERTS}
    assert names - fired == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"


def test_every_recording_rule_is_tested() -> None:
    tested = {case["expr"] for test in _promtool_tests() for case in test.get("promql_expr_test", [])}
    assert {r["record"] for r in RECORDS} <= tested
