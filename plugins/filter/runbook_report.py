# -*- coding: utf-8 -*-
# Copyright: durable-mx contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the runbooks (roles/runbook): queue tables and summaries an operator reads at 3 a.m.

runbook_human_age(seconds)               -> "0s", "42s", "5m", "3h12m", "2d4h"
runbook_queue_summary(instances, label)  -> one line per instance (postfix_queue_facts all_instances results)
runbook_queue_table(nodes, top_n)        -> the cluster table of playbooks/runbooks/status.yml
runbook_override_lines(entries, prefix)  -> one line per route override (module postfix_transport_override)
"""

from __future__ import annotations

import time
from typing import Any, Dict, Iterable, List, Mapping, Optional

SUMMARY_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold", "corrupt")


def human_age(seconds: Any) -> str:
    try:
        s = int(seconds or 0)
    except (TypeError, ValueError):
        raise ValueError("runbook_human_age: %r is not a number of seconds" % (seconds,))
    if s < 0:
        s = 0
    if s < 60:
        return "%ds" % s
    if s < 3600:
        return "%dm" % (s // 60)
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return "%dh%02dm" % (h, m) if m else "%dh" % h
    d, h = divmod(s // 3600, 24)
    return "%dd%dh" % (d, h) if h else "%dd" % d


def human_bytes(n: Any) -> str:
    n = int(n or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return "%d %s" % (n, unit) if unit == "B" else "%.1f %s" % (n, unit)
        n /= 1024.0
    return "%d B" % n  # pragma: no cover


def _queues(instance: Mapping[str, Any]) -> Mapping[str, Any]:
    return instance.get("queues") or {}


def queue_summary(instances: Iterable[Mapping[str, Any]], label: str = "", node: str = "") -> List[str]:
    """'before mx1 postfix: deferred 3, hold 1 (4 msgs, 9.1 KB), oldest 12m' per instance."""
    lines = []
    for inst in instances or []:
        queues = _queues(inst)
        parts = ["%s %d" % (q, queues[q]["count"]) for q in SUMMARY_QUEUES if (queues.get(q) or {}).get("count")]
        total = inst.get("total") or {}
        head = " ".join(x for x in (label, node, inst.get("instance") or "?") if x)
        if not parts:
            lines.append("%s: empty" % head)
            continue
        lines.append("%s: %s (%d msgs, %s), oldest %s" % (head, ", ".join(parts), total.get("count", 0),
                                                       human_bytes(total.get("bytes", 0)),
                                                       human_age(inst.get("oldest_age", 0))))
    return lines


def override_lines(entries: Iterable[Mapping[str, Any]], prefix: str = "", now: Optional[float] = None) -> List[str]:
    now = time.time() if now is None else now
    out = []
    for e in entries or []:
        until = e.get("expires_at")
        when = "until resumed" if until is None else "%s left, until %s" % (
            human_age(max(0, until - now)), time.strftime("%H:%M:%SZ", time.gmtime(until)))
        out.append("%s%s %s -> %s:%s (%s)%s" % (prefix, e.get("kind"), e.get("domain"), e.get("transport"),
                                               e.get("nexthop", ""), when,
                                               (": " + e["reason"]) if e.get("reason") else ""))
    return out


def queue_table(nodes: Iterable[Mapping[str, Any]], top_n: int = 5, now: Optional[float] = None) -> List[str]:
    """Rows: {node, instances: [postfix_queue_facts summaries], vip_held: [addresses],
    overrides: {instance: [entries]}}. Returns the printed lines."""
    fmt = "%-12s %-22s %-9s %7s %10s %8s"
    lines = [fmt % ("NODE", "INSTANCE", "QUEUE", "COUNT", "BYTES", "OLDEST")]
    notes: List[str] = []
    for row in nodes or []:
        node = row.get("node", "?")
        vips = row.get("vip_held") or []
        for inst in row.get("instances") or []:
            name = inst.get("instance") or "?"
            queues = _queues(inst)
            shown = [q for q in SUMMARY_QUEUES if (queues.get(q) or {}).get("count")]
            for q in shown:
                data = queues[q]
                lines.append(fmt % (node, name, q, data["count"], human_bytes(data.get("bytes", 0)),
                                    human_age(data.get("oldest_age", 0))))
            if not shown:
                lines.append(fmt % (node, name, "(empty)", 0, human_bytes(0), "-"))
            for reason in (inst.get("top_reasons") or [])[:top_n]:
                notes.append("%s %s: %d x [%s] %s" % (node, name, reason.get("count", 0), reason.get("class", "?"),
                                                      " ".join(str(reason.get("reason", "")).split())[:110]))
            for err in inst.get("errors") or []:
                notes.append("%s %s: unreadable queue file %s" % (node, name, err.get("path", err)))
        for name, entries in sorted((row.get("overrides") or {}).items()):
            notes.extend(override_lines(entries, "%s %s: override " % (node, name), now))
        if vips:
            notes.append("%s holds the VIP %s" % (node, ", ".join(vips)))
    if notes:
        lines.append("")
        lines.extend(notes)
    return lines


class FilterModule:
    def filters(self) -> Dict[str, Any]:
        return {
            "runbook_human_age": human_age,
            "runbook_queue_summary": queue_summary,
            "runbook_queue_table": queue_table,
            "runbook_override_lines": override_lines,
        }
