"""Filters of the runbooks (plugins/filter/runbook_report.py): what the operator reads."""

from __future__ import annotations

import pytest

import runbook_report as rr


def instance(name="postfix", **counts):
    queues = {q: {"count": 0, "bytes": 0, "oldest_age": 0} for q in rr.SUMMARY_QUEUES}
    for q, (count, size, age) in counts.items():
        queues[q] = {"count": count, "bytes": size, "oldest_age": age}
    total = {"count": sum(q["count"] for q in queues.values()), "bytes": sum(q["bytes"] for q in queues.values())}
    return {"instance": name, "queues": queues, "total": total,
            "oldest_age": max(q["oldest_age"] for q in queues.values()), "top_reasons": [], "errors": []}


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59, "59s"), (60, "1m"), (3599, "59m"), (3600, "1h"),
                                           (3660, "1h01m"), (86400, "1d"), (90000, "1d1h"), (None, "0s"), (-5, "0s")])
def test_human_age(seconds, text):
    assert rr.human_age(seconds) == text


def test_human_age_refuses_text():
    with pytest.raises(ValueError, match="not a number"):
        rr.human_age("soon")


def test_summary_one_line_per_instance():
    lines = rr.queue_summary([instance(deferred=(3, 6144, 720), hold=(1, 1000, 30)), instance("postfix-bulk")], "before", "mx1")
    assert lines == ["before mx1 postfix: deferred 3, hold 1 (4 msgs, 7.0 KB), oldest 12m",
                     "before mx1 postfix-bulk: empty"]


def test_table_rows_reasons_overrides_and_vip():
    inst = instance(deferred=(2, 2048, 400))
    inst["top_reasons"] = [{"class": "other", "reason": "4.3.2 example.net suspended by the durable-mx runbook", "count": 2}]
    rows = [{"node": "mx1", "instances": [inst], "vip_held": ["10.89.200.250"],
             "overrides": {"postfix": [{"kind": "suspend", "domain": "example.net", "transport": "retry",
                                        "nexthop": "4.3.2 x", "expires_at": 1000 + 1800, "reason": "MX down"}]}},
            {"node": "mx2", "instances": [instance()], "vip_held": [], "overrides": {}}]
    lines = rr.queue_table(rows, top_n=5, now=1000)
    assert lines[0].split() == ["NODE", "INSTANCE", "QUEUE", "COUNT", "BYTES", "OLDEST"]
    assert lines[1].split() == ["mx1", "postfix", "deferred", "2", "2.0", "KB", "6m"]
    assert lines[2].split()[:3] == ["mx2", "postfix", "(empty)"]
    assert "mx1 postfix: 2 x [other] 4.3.2 example.net suspended by the durable-mx runbook" in lines
    assert "mx1 postfix: override suspend example.net -> retry:4.3.2 x (30m left, until 00:46:40Z): MX down" in lines
    assert "mx1 holds the VIP 10.89.200.250" in lines


def test_override_without_expiry():
    assert rr.override_lines([{"kind": "reroute", "domain": "a.net", "transport": "relay", "nexthop": "[h]:25",
                               "expires_at": None}]) == ["reroute a.net -> relay:[h]:25 (until resumed)"]


def test_filters_are_registered():
    assert set(rr.FilterModule().filters()) == {"runbook_human_age", "runbook_queue_summary", "runbook_queue_table",
                                                "runbook_override_lines"}
