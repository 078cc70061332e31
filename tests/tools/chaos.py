#!/usr/bin/env python3
"""Measure a chaos exercise on the lab (playbooks/chaos/): run on the controller by the playbooks.

Every figure comes from the lab, never from the playbook: numbered traffic from the lab's sender
node (tests/tools/mailcount.py), alerts from Prometheus's HTTP API, VIP holders and health
checks through `podman exec`, copies per Message-ID counted at the sink.

  start    copy mailcount into the sender and the sink, start numbered traffic in the sender
           (a transient unit) and wait until part of it is acknowledged
  boot     start a killed node's container, no playbook; wait for its first 250 on its own address
  mark     record the time of an event of the exercise (fault, healed, mitigated, recovered ...)
  observe  after the fault: poll until detected (first pending/firing alert of the given names in
           Prometheus, or the first failed health check) and, with --vip-away, until the VIP sits
           on another primary (failover = mitigated; a split brain is noted)
  settle   wait until exactly one primary holds the VIP (after a heal), record when
  vip      print the primary that holds the VIP (fails unless exactly one does)
  wait-traffic  wait until the numbered traffic has ended
  finish   wait for the traffic to end and every acknowledged message to reach the sink; write
           and print sent / acked / delivered / lost / duplicated and the times; exit 1 on loss,
           duplicates or a missing measurement
  report   results/chaos/report.md and report.json from every exercise's JSON

State between the steps of one run lives in STATE_DIR/<exercise>.state.json.
"""

from __future__ import annotations

import argparse
import calendar
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
MAILCOUNT = TOOLS / "mailcount.py"
NODE_MAILCOUNT = "/usr/local/bin/mailcount"
SINK_DIR = "/var/lib/mail-sink"
PREFIX = "dmx-lab-"


class ChaosError(Exception):
    """A step could not run or measure; the message says which and why."""


# ------------------------------------------------------------------------------------------------
# lab access


def sh(node: str, command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", "exec", PREFIX + node, "sh", "-c", command], capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise ChaosError(f"{node}: {command!r} exited {result.returncode}: {result.stderr.strip()[-400:]}")
    return result


def install_mailcount(node: str) -> None:
    subprocess.run(["podman", "cp", str(MAILCOUNT), f"{PREFIX}{node}:{NODE_MAILCOUNT}"], check=True)


def vip_holders(primaries: list[str], vip: str) -> list[str]:
    holders = []
    for node in primaries:
        try:
            out = sh(node, "ip -4 -o addr show", check=False, timeout=10).stdout
        except subprocess.TimeoutExpired:
            continue  # a node that cannot answer does not serve the VIP either
        if f" {vip}/" in out:
            holders.append(node)
    return holders


def firing_alerts(prometheus: str, names: set[str], since: float) -> list[dict]:
    """Alerts of these names, pending or firing, that became active after `since` (epoch s)."""
    try:
        with urllib.request.urlopen(f"{prometheus}/api/v1/alerts", timeout=5) as response:
            alerts = json.load(response)["data"]["alerts"]
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return []  # Prometheus unreachable for a moment: not a detection either way
    found = []
    for alert in alerts:
        if alert["labels"].get("alertname") not in names or alert.get("state") not in ("pending", "firing"):
            continue
        active = parse_time(alert.get("activeAt", ""))
        if active is not None and active >= since - 1:
            alert["active_epoch"] = active
            found.append(alert)
    return found


def parse_time(value: str) -> float | None:
    """RFC 3339 from Prometheus (2026-11-29T06:40:01.123456789Z) to epoch seconds."""
    if not value:
        return None
    head, _, frac = value.rstrip("Z").partition(".")
    try:
        base = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
    return base + (float("0." + frac[:6]) if frac else 0.0)


def smtp_ok(sender: str, address: str, port: int = 25) -> bool:
    """An SMTP greeting (220) from address:port, as seen from the sender node within 5 s."""
    probe = ("import socket,sys\n"
             "try:\n"
             f"    s = socket.create_connection(('{address}', {port}), timeout=5); s.settimeout(5)\n"
             "    sys.exit(0 if s.recv(4).startswith(b'220') else 1)\n"
             "except OSError:\n"
             "    sys.exit(1)\n")
    try:
        return sh(sender, f"python3 -c \"{probe}\"", check=False, timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def smtp_accepts(sender: str, address: str, rcpt: str, message_id: str) -> bool:
    """address:25 acknowledges (250) one small message, as seen from the sender node within 10 s."""
    probe = ("import smtplib,sys\n"
             f"m = 'From: probe@mailcount.test\\r\\nTo: {rcpt}\\r\\nMessage-ID: {message_id}\\r\\nSubject: boot probe\\r\\n\\r\\nprobe\\r\\n'\n"
             "try:\n"
             f"    c = smtplib.SMTP('{address}', 25, timeout=5); c.sendmail('probe@mailcount.test', ['{rcpt}'], m); c.quit()\n"
             "except (OSError, smtplib.SMTPException):\n"
             "    sys.exit(1)\n")
    try:
        return subprocess.run(["podman", "exec", PREFIX + sender, "python3", "-c", probe], capture_output=True,
                              timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def dns_ok(server: str, name: str, expect: list[str]) -> bool:
    """The MX set of `name` at `server` answers NOERROR with exactly the expected exchanges."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode
    query = dns.message.make_query(name, "MX")
    try:
        answer = dns.query.udp(query, server, timeout=3)
    except (dns.exception.DNSException, OSError):
        return False
    if answer.rcode() != dns.rcode.NOERROR:
        return False
    got = sorted(f"{r.preference} {r.exchange.to_text().rstrip('.')}" for rrset in answer.answer
                 if rrset.rdtype == 15 for r in rrset)
    return got == sorted(expect)


# ------------------------------------------------------------------------------------------------
# state


def state_path(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) / f"{args.exercise}.state.json"


def load_state(args: argparse.Namespace) -> dict:
    path = state_path(args)
    if not path.exists():
        raise ChaosError(f"no state for exercise {args.exercise!r} in {path}: run `chaos.py start` first")
    return json.loads(path.read_text())


def save_state(args: argparse.Namespace, state: dict) -> None:
    path = state_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=1) + "\n")


def acked_count(sender: str, out: str) -> int:
    return int(sh(sender, f"grep -c '\"code\": 250' {out} || true").stdout.strip() or 0)


# ------------------------------------------------------------------------------------------------
# commands


def cmd_start(args: argparse.Namespace) -> int:
    tag = f"chaos-{args.exercise}-{int(time.time())}"
    for node in (args.sender, args.sink):
        install_mailcount(node)
    out = f"/root/{tag}.jsonl"
    unit = f"mc-{tag}"
    sh(args.sender, f"systemd-run --quiet --collect --unit {unit} python3 {NODE_MAILCOUNT} send --host {args.host} "
                    f"--port {args.port} --count {args.count} --interval {args.interval} --rcpt {args.rcpt} "
                    f"--tag {tag} --timeout {args.session_timeout} --parallel {args.parallel} --reconnect-delay 0.5 --out {out}")
    state = {"exercise": args.exercise, "tag": tag, "sender": args.sender, "sink": args.sink, "unit": unit,
             "out": out, "target": f"{args.host}:{args.port}", "started": time.time(), "events": {}}
    save_state(args, state)
    deadline = time.monotonic() + args.timeout
    while acked_count(args.sender, out) < args.warmup:
        if time.monotonic() > deadline:
            raise ChaosError(f"fewer than {args.warmup} of {tag} acknowledged by {args.host}:{args.port} "
                             f"after {args.timeout:.0f} s: is the lab healthy before the fault?")
        time.sleep(1)
    print(json.dumps({"tag": tag, "target": state["target"], "acked_before_fault": acked_count(args.sender, out)}))
    return 0


def cmd_mark(args: argparse.Namespace) -> int:
    state = load_state(args)
    state["events"][args.event] = args.at if args.at else time.time()
    if args.note:
        state.setdefault("notes", []).append(args.note)
    save_state(args, state)
    print(json.dumps({args.event: round(state["events"][args.event] - state["events"].get("fault", state["started"]), 1)}))
    return 0


def cmd_boot(args: argparse.Namespace) -> int:
    """Start a killed node's container (its boot: systemd, the queue volume's mount unit, the
    integrity scan, Postfix, keepalived), run no playbook, and wait until the node acknowledges a
    message on its own address. Records `booted` and `serving` (the first 250)."""
    state = load_state(args)
    state["events"]["booted"] = time.time()
    save_state(args, state)
    subprocess.run(["podman", "start", args.container], check=True, capture_output=True)
    message_id = f"<boot-probe-{state['tag']}@mailcount.test>"  # not the run's tag: not counted with it
    deadline = time.monotonic() + args.timeout
    while not smtp_accepts(state["sender"], args.address, args.rcpt, message_id):
        if time.monotonic() > deadline:
            raise ChaosError(f"{args.container} acknowledged nothing on {args.address}:25 within {args.timeout:.0f} s of its boot")
        time.sleep(0.2)
    state["events"]["serving"] = time.time()
    save_state(args, state)
    print(json.dumps({"boot_to_first_250_s": round(state["events"]["serving"] - state["events"]["booted"], 1)}))
    return 0


def cmd_observe(args: argparse.Namespace) -> int:
    """Poll until both signals are in (the first alert and the first failed health check, each
    if asked for) and, with --vip-away, the VIP has failed over. Detection is the earlier one."""
    state = load_state(args)
    fault = state["events"].get("fault")
    if fault is None:
        raise ChaosError("no fault recorded: run `chaos.py mark EXERCISE fault` right after injecting it")
    names = set(filter(None, args.alerts.split(",")))
    smtp = [item.split("=", 1) for item in args.smtp]
    signals: dict[str, dict] = state.setdefault("signals", {})
    mitigated = state["events"].get("mitigated")
    deadline = time.monotonic() + args.timeout
    while True:
        now = time.time()
        if names and "alert" not in signals:
            alerts = firing_alerts(args.prometheus, names, fault)
            if alerts:
                first = min(alerts, key=lambda a: a["active_epoch"])
                labels = first["labels"]
                where = labels.get("node") or labels.get("instance") or labels.get("vip") or ""
                signals["alert"] = {"signal": f"alert {labels['alertname']} {where} {first['state']}".replace("  ", " "),
                                    "at": first["active_epoch"]}
        if (smtp or args.dns or args.probe) and "health" not in signals:
            failed = [f"no SMTP greeting from {label} ({address}:25)" for label, address in smtp
                      if not smtp_ok(state["sender"], address)]
            for item in args.probe:
                label, _, rest = item.partition("=")
                node, _, command = rest.partition(":")
                try:
                    probe_failed = sh(node, command, check=False, timeout=15).returncode != 0
                except subprocess.TimeoutExpired:
                    probe_failed = True
                if probe_failed:
                    failed.append(f"{label} failed on {node}")
            if args.dns and not dns_ok(args.dns_server, args.dns, args.dns_expect):
                failed.append(f"MX of {args.dns} at {args.dns_server} is not the published set")
            if failed:
                signals["health"] = {"signal": "health check: " + failed[0], "at": now}
        for kind in ("health", "alert"):
            if kind in signals and not signals[kind].get("shown"):
                signals[kind]["shown"] = True
                print(f"{kind} after {signals[kind]['at'] - fault:.1f} s: {signals[kind]['signal']}", flush=True)
        if args.vip_away and mitigated is None:
            holders = vip_holders(args.primaries.split(","), args.vip)
            others = [h for h in holders if h != args.vip_away]
            if others:
                # A peer took the VIP over. If the failed node still has it too (it cannot see
                # the peer, e.g. a partition), that is a split brain: say so.
                mitigated = now
                split = " (split brain: " + " and ".join(holders) + " hold it)" if len(holders) > 1 else ""
                state.setdefault("notes", []).append(f"VIP {args.vip} taken over by {others[0]}{split}")
                print(f"mitigated after {mitigated - fault:.1f} s: VIP on {others[0]}{split}", flush=True)
        wanted_in = (("alert" in signals or not names) and ("health" in signals or not (smtp or args.dns or args.probe))
                     and (mitigated is not None or not args.vip_away))
        if wanted_in or time.monotonic() > deadline:
            break
        time.sleep(args.interval)
    if signals:
        first = min(signals.values(), key=lambda d: d["at"])
        state["detected"] = {"signal": first["signal"], "at": first["at"]}
    for kind, seen in signals.items():
        state["events"][f"detected_{kind}"] = seen["at"]
    if mitigated is not None:
        state["events"]["mitigated"] = mitigated
    save_state(args, state)
    missing = [what for what, value in (("any detection", signals or None),
                                        ("VIP failover", mitigated if args.vip_away else True)) if value is None]
    if missing:
        print(f"not seen within {args.timeout:.0f} s: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def cmd_settle(args: argparse.Namespace) -> int:
    """Wait until exactly one primary holds the VIP for 3 s in a row; record it as EVENT."""
    state = load_state(args)
    primaries = args.primaries.split(",")
    deadline = time.monotonic() + args.timeout
    seen: list[list[str]] = []
    stable_since: float | None = None
    while True:
        holders = vip_holders(primaries, args.vip)
        if not seen or seen[-1] != holders:
            seen.append(holders)
        if len(holders) == 1:
            stable_since = stable_since or time.time()
            if time.time() - stable_since >= 3:
                break
        else:
            stable_since = None
        if time.monotonic() > deadline:
            raise ChaosError(f"the VIP {args.vip} did not settle on one primary within {args.timeout:.0f} s: {seen}")
        time.sleep(0.5)
    state["events"][args.event] = stable_since
    state.setdefault("notes", []).append(f"{args.event}: VIP holders went " + " -> ".join(
        "+".join(h) or "none" for h in seen))
    save_state(args, state)
    print(json.dumps({"holder": seen[-1][0], "holders_seen": seen}))
    return 0


def cmd_vip(args: argparse.Namespace) -> int:
    holders = vip_holders(args.primaries.split(","), args.vip)
    if len(holders) != 1:
        raise ChaosError(f"the VIP {args.vip} must sit on exactly one primary, it sits on {holders or 'none'}")
    print(holders[0])
    return 0


def count_at_sink(state: dict) -> dict[str, int]:
    out = sh(state["sink"], f"python3 {NODE_MAILCOUNT} count --dir {SINK_DIR} --tag {state['tag']}").stdout
    return json.loads(out)


def wait_for_traffic(state: dict, timeout: float) -> None:
    """Until the numbered traffic (the sender's transient unit) has ended."""
    deadline = time.monotonic() + timeout
    while sh(state["sender"], f"systemctl is-active {state['unit']}", check=False).stdout.strip() in ("active", "activating"):
        if time.monotonic() > deadline:
            raise ChaosError(f"traffic {state['tag']} still running after {timeout:.0f} s")
        time.sleep(2)


def cmd_wait_traffic(args: argparse.Namespace) -> int:
    wait_for_traffic(load_state(args), args.timeout)
    return 0


def cmd_finish(args: argparse.Namespace) -> int:
    state = load_state(args)
    sender = state["sender"]
    deadline = time.monotonic() + args.timeout
    wait_for_traffic(state, args.timeout)
    records = [json.loads(line) for line in sh(sender, f"cat {state['out']}").stdout.splitlines() if line.strip()]
    acked = {r["message_id"] for r in records if r["code"] == 250 and r["queue_id"]}
    counts: dict[str, int] = {}
    waited = time.monotonic()
    while True:
        counts = count_at_sink(state)
        if acked <= set(counts) or time.monotonic() > deadline:
            break
        time.sleep(3)
    delivered_at = time.time()
    lost = sorted(acked - set(counts), key=lambda m: int(m.split("-")[-1].split("@")[0]))
    events = state["events"]
    fault = events.get("fault")
    detected = state.get("detected")

    def since_fault(at: float | None) -> float | None:
        return None if at is None or fault is None else round(at - fault, 1)

    result = {
        "exercise": state["exercise"],
        "tag": state["tag"],
        "target": state["target"],
        "sent": len(records),
        "acked": len(acked),
        "refused": sum(1 for r in records if isinstance(r["code"], int) and 400 <= r["code"] < 600),
        "errors": sum(1 for r in records if r["code"] == -1),
        "delivered": len(set(counts) & acked),
        "lost": len(lost),
        "duplicated": sum(n - 1 for n in counts.values()),
        "unexpected": len(set(counts) - acked),  # delivered without a 250 (the client saw an error)
        # The longest wait of a client for one message's outcome: a session that hangs shows here.
        "longest_session_s": max((r.get("seconds", 0.0) for r in records), default=None),
        "time_to_detect_s": since_fault(detected["at"]) if detected else None,
        "detect_signal": detected["signal"] if detected else None,
        "time_to_mitigate_s": since_fault(events.get("mitigated")),
        "boot_to_first_250_s": (round(events["serving"] - events["booted"], 1)
                                if "serving" in events and "booted" in events else None),
        "mitigation": args.mitigation,
        "events_s": {name: since_fault(at) for name, at in sorted(events.items(), key=lambda kv: kv[1])},
        "delivery_wait_s": round(time.monotonic() - waited, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(delivered_at)),
        "notes": state.get("notes", []) + list(args.note),
        "lost_ids": lost[:20],
    }
    problems = []
    if result["lost"]:
        problems.append(f"{result['lost']} acknowledged messages never reached the sink")
    if result["duplicated"] and args.crash_window:
        # Delivered, then the node died before it removed the queue file: SMTP delivers such a
        # message again after recovery (at least once). Counted and shown, not a failure.
        result["notes"].append(f"{result['duplicated']} duplicate(s) from the crash window (at-least-once delivery)")
    elif result["duplicated"]:
        problems.append(f"{result['duplicated']} duplicate copies at the sink")
    if result["acked"] == 0:
        problems.append("no message was acknowledged: nothing was measured")
    if detected is None:
        problems.append("the fault was not detected")
    if events.get("mitigated") is None:
        problems.append("no mitigation recorded")
    for event in args.require:
        if events.get(event) is None:
            problems.append(f"no {event} recorded")
    result["passed"] = not problems
    result["problems"] = problems
    out = Path(args.state_dir) / f"{state['exercise']}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(figures_line(result))
    for problem in problems:
        print(f"FAIL: {problem}")
    return 0 if result["passed"] else 1


def figures_line(r: dict) -> str:
    def s(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} s"

    return (f"[{r['exercise']}] detect={s(r['time_to_detect_s'])} ({r['detect_signal']}) "
            f"mitigate={s(r['time_to_mitigate_s'])} ({r['mitigation']}) sent={r['sent']} acked={r['acked']} "
            f"delivered={r['delivered']} lost={r['lost']} duplicated={r['duplicated']} "
            f"longest_session={s(r.get('longest_session_s'))} boot_to_first_250={s(r.get('boot_to_first_250_s'))} "
            f"events={json.dumps(r['events_s'])} {'PASS' if r['passed'] else 'FAIL'}")


def cmd_report(args: argparse.Namespace) -> int:
    directory = Path(args.state_dir)
    rows = []
    for name in args.exercises.split(","):
        path = directory / f"{name}.json"
        row = json.loads(path.read_text()) if path.exists() else None
        # A result older than this suite run belongs to an earlier run: it does not count.
        if row is None or (args.since and row["finished"] < args.since):
            row = {"exercise": name, "passed": False, "problems": ["no result from this run (the playbook failed)"]}
        rows.append(row)
    report = {"generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "exercises": rows,
              "passed": all(r["passed"] for r in rows)}
    (directory / "report.json").write_text(json.dumps(report, indent=1) + "\n")

    def cell(row: dict, key: str, unit: str = "") -> str:
        value = row.get(key)
        return "-" if value is None else f"{value}{unit}"

    lines = [f"# Chaos exercises on the lab — {report['generated']}", "",
             "| exercise | detect | signal | mitigate | how | sent | acked | delivered | lost | duplicated | result |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['exercise']} | {cell(r, 'time_to_detect_s', ' s')} | {cell(r, 'detect_signal')} | "
                     f"{cell(r, 'time_to_mitigate_s', ' s')} | {cell(r, 'mitigation')} | {cell(r, 'sent')} | "
                     f"{cell(r, 'acked')} | {cell(r, 'delivered')} | {cell(r, 'lost')} | {cell(r, 'duplicated')} | "
                     f"{'pass' if r['passed'] else 'FAIL: ' + '; '.join(r['problems'])} |")
    lines += ["", "Times are seconds after the fault was injected. Events per exercise (s after the fault):", ""]
    for r in rows:
        if r.get("events_s"):
            notes = "; ".join(r.get("notes", []))
            lines.append(f"- {r['exercise']}: {json.dumps(r['events_s'])}{' — ' + notes if notes else ''}")
    (directory / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if report["passed"] else 1


# ------------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state-dir", default="results/chaos", help="where state, results and the report go")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("start", help="start numbered traffic in the sender node")
    s.add_argument("exercise")
    s.add_argument("--sender", required=True, help="inventory name of the lab's sender node")
    s.add_argument("--sink", required=True, help="inventory name of the lab's sink node")
    s.add_argument("--host", required=True, help="where the sender sends: the VIP, or 127.0.0.1 for its own Postfix")
    s.add_argument("--port", type=int, default=25)
    s.add_argument("--rcpt", required=True)
    s.add_argument("--count", type=int, default=300)
    s.add_argument("--interval", type=float, default=0.2, help="one message every INTERVAL s")
    s.add_argument("--parallel", type=int, default=1, help="concurrent SMTP sessions")
    s.add_argument("--session-timeout", type=float, default=20,
                   help="the client's SMTP timeout (a sending MTA waits up to 600 s: a hang shows as a long session)")
    s.add_argument("--warmup", type=int, default=20, help="acknowledged messages to wait for before returning")
    s.add_argument("--timeout", type=float, default=120)
    s.set_defaults(func=cmd_start)

    m = sub.add_parser("mark", help="record the time of an event")
    m.add_argument("exercise")
    m.add_argument("event")
    m.add_argument("--note", default="")
    m.add_argument("--at", type=float, default=0.0, help="when it happened (epoch s, as a node recorded it); default now")
    m.set_defaults(func=cmd_mark)

    o = sub.add_parser("observe", help="wait for detection (and VIP failover)")
    o.add_argument("exercise")
    o.add_argument("--prometheus", required=True, help="base URL of the lab's Prometheus")
    o.add_argument("--alerts", default="", help="comma-separated alert names that count as detection")
    o.add_argument("--smtp", action="append", default=[], help="LABEL=ADDRESS whose SMTP greeting is a health check")
    o.add_argument("--probe", action="append", default=[],
                   help="LABEL=NODE:COMMAND, a health check run in NODE that fails with a non-zero exit")
    o.add_argument("--dns", default="", help="domain whose MX set is a health check")
    o.add_argument("--dns-server", default="")
    o.add_argument("--dns-expect", action="append", default=[], help="'PREF EXCHANGE' of the published MX set")
    o.add_argument("--vip-away", default="", help="wait until the VIP sits on one primary other than this one")
    o.add_argument("--primaries", default="")
    o.add_argument("--vip", default="")
    o.add_argument("--interval", type=float, default=1.0)
    o.add_argument("--timeout", type=float, default=300)
    o.set_defaults(func=cmd_observe)

    b = sub.add_parser("boot", help="start a killed node's container, wait for its first 250 (no playbook)")
    b.add_argument("exercise")
    b.add_argument("--container", required=True)
    b.add_argument("--address", required=True, help="the node's own address (not the VIP)")
    b.add_argument("--rcpt", required=True)
    b.add_argument("--timeout", type=float, default=180)
    b.set_defaults(func=cmd_boot)

    v = sub.add_parser("vip", help="the primary holding the VIP")
    v.add_argument("--primaries", required=True)
    v.add_argument("--vip", required=True)
    v.set_defaults(func=cmd_vip)

    t = sub.add_parser("settle", help="wait for exactly one VIP holder, record the time")
    t.add_argument("exercise")
    t.add_argument("event", help="name of the event to record (e.g. single_holder)")
    t.add_argument("--primaries", required=True)
    t.add_argument("--vip", required=True)
    t.add_argument("--timeout", type=float, default=120)
    t.set_defaults(func=cmd_settle)

    w = sub.add_parser("wait-traffic", help="wait until the numbered traffic has ended")
    w.add_argument("exercise")
    w.add_argument("--timeout", type=float, default=600)
    w.set_defaults(func=cmd_wait_traffic)

    f = sub.add_parser("finish", help="count at the sink, write and print the figures")
    f.add_argument("exercise")
    f.add_argument("--mitigation", required=True, help="what counts as mitigated in this exercise")
    f.add_argument("--note", action="append", default=[])
    f.add_argument("--require", action="append", default=[], help="an event that must have been recorded")
    f.add_argument("--timeout", type=float, default=600)
    f.add_argument("--crash-window", action="store_true",
                   help="the exercise kills a node mid-delivery: duplicates from that window are reported, not failed")
    f.set_defaults(func=cmd_finish)

    r = sub.add_parser("report", help="report.md and report.json of the exercises")
    r.add_argument("--exercises", required=True, help="comma-separated, in report order")
    r.add_argument("--since", default="", help="ignore results finished before this UTC time (YYYY-MM-DDTHH:MM:SSZ)")
    r.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ChaosError as exc:
        print(f"chaos.py {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
