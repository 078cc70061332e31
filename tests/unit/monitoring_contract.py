"""The exporter's metric contract (files/prometheus/metrics.txt) and a small PromQL reader that
finds the metric names an expression selects. Shared by test_dashboard.py and
test_prometheus_rules.py."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
METRICS_FILE = ROOT / "files" / "prometheus" / "metrics.txt"
RULES_DIR = ROOT / "files" / "prometheus" / "rules"
PROMTOOL_TESTS_DIR = ROOT / "tests" / "promtool"
DASHBOARD = ROOT / "files" / "grafana" / "durable-mx-dashboard.json"
RUNBOOKS = ROOT / "docs" / "runbooks.md"

# Series Prometheus itself writes for every target; not part of the exporter's contract.
PROMETHEUS_SERIES = frozenset({"up"})

_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
     "inf", "nan"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$\w+")
# A whole identifier, not glued to a number (5m, 1e3) and not followed by "(" (a function or an
# aggregation).
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")


def contract() -> frozenset[str]:
    names = [line.strip() for line in METRICS_FILE.read_text().splitlines()]
    return frozenset(name for name in names if name)


def metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (Grafana variables allowed)."""
    text = _STRING.sub('""', expr)
    text = _GRAFANA_VAR.sub("1", text)
    text = _BRACES.sub("", text)
    text = _BRACKETS.sub("", text)
    text = _LABEL_LIST.sub("", text)
    return {name for name in _IDENT.findall(text) if name.lower() not in _KEYWORDS}
