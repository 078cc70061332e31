"""files/grafana/durable-mx-dashboard.json: importable (JSON, datasource as an import input), and
every query asks only for metrics of the exporter's contract (files/prometheus/metrics.txt)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from monitoring_contract import DASHBOARD, PROMETHEUS_SERIES, ROOT, contract, metric_names

DS_REF = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows keep their panels inside
    return out


def _targets(dashboard: dict) -> list[tuple[str, dict]]:
    return [(panel["title"], t) for panel in _panels(dashboard) for t in panel.get("targets", [])]


def test_metric_names_reader() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, stage) (rate(durablemx_delivery_delay_seconds_bucket'
        '{instance=~"$node",le=~"120|1e3"}[$__rate_interval]))) / on (x) group_left (y) '
        'sum without (a) (up{job="durable-mx"} offset 5m) > bool 1e3 and absent(foo:bar:rate5m)'
    )
    assert metric_names(expr) == {"durablemx_delivery_delay_seconds_bucket", "up", "foo:bar:rate5m"}


def test_contract_file_is_one_metric_name_per_line() -> None:
    names = contract()
    assert len(names) >= 20
    for name in names:
        assert name.startswith("durablemx_") and name.isidentifier(), name


def test_dashboard_is_an_importable_grafana_dashboard(dashboard: dict) -> None:
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard["id"] is None, "an exported dashboard must not carry a database id"
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"node", "postfix_instance"} <= set(variables)
    assert "instance)" in variables["node"]["definition"]
    assert "postfix_instance)" in variables["postfix_instance"]["definition"]
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"] == DS_REF, v["name"]


def test_panels_have_unique_ids_and_do_not_overlap(dashboard: dict) -> None:
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_every_query_uses_the_import_datasource(dashboard: dict) -> None:
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DS_REF, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for t in panel["targets"]:
            assert t["datasource"] == DS_REF, panel["title"]


def test_every_query_reads_only_contract_metrics(dashboard: dict) -> None:
    allowed = contract() | PROMETHEUS_SERIES
    for title, t in _targets(dashboard):
        names = metric_names(t["expr"])
        assert names, f"{title}: no metric in {t['expr']!r}"
        unknown = names - allowed
        assert not unknown, f"{title}: {sorted(unknown)} not in files/prometheus/metrics.txt"


def test_required_panels_are_there(dashboard: dict) -> None:
    used = set().union(*(metric_names(t["expr"]) for _, t in _targets(dashboard)))
    # Everything the exporter emits has a place on the dashboard except histogram sums and counts.
    not_shown = contract() - used
    assert not_shown <= {
        "durablemx_queue_message_age_seconds_gcount",
        "durablemx_queue_message_age_seconds_gsum",
        "durablemx_delivery_delay_seconds_sum",
    }, sorted(not_shown)
    types = {p["type"] for p in _panels(dashboard)}
    assert "heatmap" in types


def _promtool() -> str | None:
    cached = ROOT / ".cache" / "promtool" / "root" / "usr" / "bin" / "promtool"
    return shutil.which("promtool") or (str(cached) if os.access(cached, os.X_OK) else None)


def test_every_query_parses(dashboard: dict, tmp_path: Path) -> None:
    """promtool parses each query (as a recording rule, Grafana variables filled in)."""
    promtool = _promtool()
    if not promtool:
        # `make test` fetches promtool (target rules) before the unit tests: there, this never skips.
        if os.environ.get("CI"):
            pytest.fail("no promtool in CI: tests/promtool/run.sh should have fetched it")
        pytest.skip("no promtool: run tests/promtool/run.sh once to fetch it")
    rules = []
    for i, (_, t) in enumerate(_targets(dashboard)):
        expr = t["expr"].replace("$__rate_interval", "1m")
        for var in ("$node", "$postfix_instance", "$queue"):
            expr = expr.replace(var, ".*")
        rules.append({"record": f"dashboard:query:{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
