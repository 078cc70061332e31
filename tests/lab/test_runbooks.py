"""The runbooks (playbooks/runbooks/) against the running lab (`make lab`, then `make runbooks`).

Each test runs a runbook the way an operator would (ansible-playbook against inventories/lab) and
checks its effect on the real nodes through `podman exec`: routes in the override map, what
Postfix says about deferred mail, the VIP holders, port 25, messages counted at the lab sink by
Message-ID. Each also runs the runbook a second time (nothing may change) and, where it changes
something, once in check mode first (nothing may change on the nodes).

Mail comes from the lab's `sender` node (tests/tools/mailcount.py) to a primary's own address or
to the VIP, for the lab domain only; the primaries deliver it to the sink. Nothing leaves the lab.

Skipped unless DMX_LAB_TESTS=1 (set by `make runbooks`) and the lab's containers run.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INVENTORY = REPO / "inventories" / "lab" / "hosts.yml"
PREFIX = "dmx-lab-"

if os.environ.get("DMX_LAB_TESTS") != "1":
    pytest.skip("lab tests: run `make runbooks` against a running lab (DMX_LAB_TESTS=1)", allow_module_level=True)
if subprocess.run(["podman", "container", "exists", PREFIX + "mx1"], capture_output=True).returncode != 0:
    pytest.skip("the lab is not running (make lab)", allow_module_level=True)


def _inventory() -> tuple[dict[str, list[str]], dict[str, str]]:
    groups: dict[str, list[str]] = {}
    address: dict[str, str] = {}

    def walk(name: str, body: dict | None) -> list[str]:
        body = body or {}
        members = []
        for host, hv in (body.get("hosts") or {}).items():
            members.append(host)
            address[host] = ((hv or {}).get("lab_node_spec") or {}).get("ip", "")
        for child, child_body in (body.get("children") or {}).items():
            members += walk(child, child_body)
        groups[name] = sorted(set(members))
        return members

    for name, body in yaml.safe_load(INVENTORY.read_text()).items():
        walk(name, body)
    return groups, address


GROUPS, ADDRESS = _inventory()
PRIMARIES = GROUPS["mx_primary"]
SINK = GROUPS["mail_sink"][0]
SENDER = GROUPS["mail_sender"][0]
VIP = yaml.safe_load((REPO / "inventories" / "lab" / "host_vars" / "localhost.yml").read_text())["lab_mx_vip"]
DOMAIN = "durable-mx.test"
RCPT = f"test@{DOMAIN}"
SINK_DIR = "/var/lib/mail-sink"
MAP = "/etc/postfix/durable-mx-runbook-transport"
MAILCOUNT = REPO / "tests" / "tools" / "mailcount.py"
# Message-ID tags are unique per run: copies stored by the sink in earlier runs must not count.
RUN = str(int(time.time()))


# ------------------------------------------------------------------------------------------------
# helpers


def sh(node: str, command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", "exec", PREFIX + node, "sh", "-c", command], capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{node}: {command!r} exited {result.returncode}: {result.stdout[-600:]} {result.stderr[-600:]}")
    return result


def wait_for(predicate, timeout: float, what: str, interval: float = 1.0) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


def runbook(name: str, *extra: str, check: bool = False, timeout: float = 900) -> tuple[int, dict, str]:
    """Run playbooks/runbooks/NAME.yml against the lab; (rc, JSON result, stderr)."""
    env = dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
               ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    command = ["ansible-playbook", "-i", str(INVENTORY), str(REPO / "playbooks" / "runbooks" / f"{name}.yml"), *extra]
    if check:
        command.append("--check")
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout,
                            stdin=subprocess.DEVNULL)
    try:
        outcome = json.loads(result.stdout)
    except ValueError as exc:
        raise AssertionError(f"{name}: no JSON result ({exc}): {result.stdout[-1500:]} {result.stderr[-1500:]}")
    return result.returncode, outcome, result.stderr


def ok(name: str, *extra: str, check: bool = False) -> dict:
    rc, outcome, err = runbook(name, *extra, check=check)
    assert rc == 0, f"{name} {' '.join(extra)} failed (rc={rc}): {failures(outcome)} {err[-800:]}"
    return outcome


def failures(outcome: dict) -> list[str]:
    out = []
    for play in outcome.get("plays", []):
        for task in play["tasks"]:
            for host, res in task["hosts"].items():
                if res.get("failed"):
                    out.append(f"{host}: {task['task']['name']}: {res.get('msg', '')}"[:600])
    return out


def changed(outcome: dict) -> int:
    return sum(s.get("changed", 0) for s in outcome["stats"].values())


def changed_tasks(outcome: dict) -> list[str]:
    return [f"{host}: {task['task']['name']}" for play in outcome["plays"] for task in play["tasks"]
            for host, res in task["hosts"].items() if res.get("changed")]


def results(outcome: dict, task_name: str) -> dict[str, dict]:
    """host -> result of the (last) task whose name starts with task_name."""
    found: dict[str, dict] = {}
    for play in outcome["plays"]:
        for task in play["tasks"]:
            if task["task"]["name"].split(" : ", 1)[-1].startswith(task_name):
                found.update(task["hosts"])
    assert found, f"task {task_name!r} not in the run"
    return found


def messages(outcome: dict, task_name: str) -> list[str]:
    """Every line printed by every run of the tasks whose name starts with task_name."""
    lines: list[str] = []
    for play in outcome["plays"]:
        for task in play["tasks"]:
            if task["task"]["name"].split(" : ", 1)[-1].startswith(task_name):
                for res in task["hosts"].values():
                    msg = res.get("msg", [])
                    lines += msg if isinstance(msg, list) else [str(msg)]
    assert lines, f"task {task_name!r} printed nothing"
    return lines


def map_lookup(node: str, domain: str = DOMAIN) -> str:
    return sh(node, f"postmap -q {domain} texthash:{MAP}", check=False).stdout.strip()


def queue(node: str) -> list[dict]:
    return [json.loads(line) for line in sh(node, "postqueue -j").stdout.splitlines() if line.strip()]


@functools.cache  # once per node and run: sink_counts polls
def install_mailcount(node: str) -> None:
    subprocess.run(["podman", "cp", str(MAILCOUNT), f"{PREFIX}{node}:/usr/local/bin/mailcount"], check=True)


def start_send(host: str, tag: str, count: int, delay: float = 0.0, sender: str = "sender@mailcount.test") -> subprocess.Popen:
    install_mailcount(SENDER)
    command = (f"python3 /usr/local/bin/mailcount send --host {host} --count {count} --rcpt {RCPT} --tag {tag} "
               f"--sender {sender} --delay {delay} --timeout 20 --reconnect-delay 0.2 --out /root/{tag}.jsonl")
    return subprocess.Popen(["podman", "exec", PREFIX + SENDER, "sh", "-c", command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish_send(process: subprocess.Popen, tag: str, timeout: float = 600) -> list[dict]:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"mailcount send failed: {out} {err}"
    return [json.loads(line) for line in sh(SENDER, f"cat /root/{tag}.jsonl").stdout.splitlines() if line.strip()]


def send(host: str, tag: str, count: int, **kwargs) -> list[dict]:
    records = finish_send(start_send(host, tag, count, **kwargs), tag)
    assert all(r["code"] == 250 and r["queue_id"] for r in records), f"not every message was accepted: {records}"
    return records


def sink_counts(tag: str) -> dict[str, int]:
    install_mailcount(SINK)
    return json.loads(sh(SINK, f"python3 /usr/local/bin/mailcount count --dir {SINK_DIR} --tag {tag}").stdout)


def wait_at_sink(records: list[dict], tag: str, timeout: float) -> dict[str, int]:
    wanted = {r["message_id"] for r in records if r["code"] == 250 and r["queue_id"]}
    state = {"counts": {}}

    def arrived() -> bool:
        state["counts"] = sink_counts(tag)
        return wanted <= set(state["counts"])

    try:
        wait_for(arrived, timeout, f"{len(wanted)} messages of {tag} at the sink")
    except AssertionError:
        pass  # the figures show what is missing
    return state["counts"]


def vip_holders() -> list[str]:
    return [n for n in PRIMARIES if f" {VIP}/" in sh(n, "ip -4 -o addr show", check=False).stdout]


def smtp_refused(node: str) -> bool:
    probe = (f"python3 -c \"import socket; s = socket.socket(); s.settimeout(3); "
             f"print(s.connect_ex(('{ADDRESS[node]}', 25)))\"")
    return sh(SENDER, probe).stdout.strip() != "0"


def ids_in(node: str, queue_name: str, wanted: list[str]) -> list[str]:
    return sorted(m["queue_id"] for m in queue(node) if m["queue_name"] == queue_name and m["queue_id"] in wanted)


# ------------------------------------------------------------------------------------------------
# tests, in the order an incident would use them


@pytest.fixture(scope="module", autouse=True)
def clean_overrides():
    """Start and end without a runbook override of the lab domain on the primaries."""
    ok("resume", "-e", f"domain={DOMAIN}", "-l", "mx_primary")
    yield
    ok("resume", "-e", f"domain={DOMAIN}", "-l", "mx_primary")


def test_main_cf_lists_the_runbook_map_first():
    for node in GROUPS["mx"]:
        maps = sh(node, "postconf -h transport_maps").stdout
        assert maps.strip().startswith(f"texthash:{MAP}"), f"{node}: {maps}"
        assert sh(node, "postconf -h dmx_throttle_crawl_destination_rate_delay").stdout.strip() == "10s"


def test_status_is_read_only_and_prints_a_table():
    outcome = ok("status")
    assert changed(outcome) == 0, changed_tasks(outcome)
    table = messages(outcome, "Show the cluster's queues")
    assert table[0].split() == ["NODE", "INSTANCE", "QUEUE", "COUNT", "BYTES", "OLDEST"]
    nodes = {line.split()[0] for line in table[1:] if line and not line.startswith(" ")}
    assert set(GROUPS["mx"]) <= nodes
    assert any(line.endswith(f"holds the VIP {VIP}") for line in table), table
    print("\n" + "\n".join(table))
    assert changed(ok("status", check=True)) == 0


def sink_service(action: str) -> None:
    """Take the lab's final destination down (or back): mail for the lab domain then waits, deferred."""
    sh(SINK, f"systemctl {action} mail-sink")


def test_suspend_defers_with_the_reason_and_expiry_lifts_it():
    node = "mx1"
    args = ("-e", f"domain={DOMAIN}", "-e", "duration=75s", "-e", json.dumps({"reason": "lab test"}), "-l", node)
    # The destination is down: mail waits in the deferred queue (connection refused).
    sink_service("stop")
    try:
        records = send(ADDRESS[node], f"rb-suspend-{RUN}", 3)
    finally:
        sink_service("start")
    ids = [r["queue_id"] for r in records]
    wait_for(lambda: len(ids_in(node, "deferred", ids)) == 3, 60, "3 deferred messages")

    before = map_lookup(node)
    ok("suspend", *args, check=True)
    assert map_lookup(node) == before == "", "check mode changed the map"
    outcome = ok("suspend", *args)
    assert changed(outcome) > 0
    route = map_lookup(node)
    assert route == f"retry:4.3.2 {DOMAIN} suspended by the durable-mx runbook: lab test", route
    assert any("before" in line for line in messages(outcome, "Show the queue summary"))
    again = ok("suspend", *args)
    assert changed(again) == 0, changed_tasks(again)
    try:
        suspended_checks(node, ids, records)
    finally:
        ok("resume", "-e", f"domain={DOMAIN}", "-l", node, "-e", "flush=no")


def suspended_checks(node: str, ids: list[str], records: list[dict]) -> None:
    # A flush cannot bypass it (retry: never connects, unlike defer_transports): the queued mail is
    # deferred again, now with the suspension's reason, although the sink is back.
    ok("flush", "-e", f"domain={DOMAIN}", "-l", node)

    def deferred_with_reason() -> bool:
        msgs = [m for m in queue(node) if m["queue_id"] in ids]
        return len(msgs) == 3 and all(m["queue_name"] == "deferred" and "suspended by the durable-mx runbook"
                                      in m["recipients"][0].get("delay_reason", "") for m in msgs)

    wait_for(deferred_with_reason, 60, "the 3 messages deferred with the suspension's reason")
    assert sink_counts(f"rb-suspend-{RUN}") == {}
    # New mail for a suspended relay domain is refused with 450 and the same reason (the sender keeps it).
    refused = finish_send(start_send(ADDRESS[node], f"rb-suspend-new-{RUN}", 1), f"rb-suspend-new-{RUN}")
    assert refused[0]["code"] == 450 and "suspended by the durable-mx runbook" in refused[0]["reply"], refused
    table = messages(ok("status", "-l", node), "Show the cluster's queues")
    assert any("override suspend durable-mx.test" in line for line in table), table
    print("\n" + "\n".join(table))

    # The timer lifts it (75 s after it was set, checked every 15 s): no runbook run needed.
    took = wait_for(lambda: map_lookup(node) == "", 150, "the suspension to expire")
    print(f"\n[suspend] expired {took:.0f} s after the deferral check")
    assert "expired" in sh(node, "journalctl -q -u durable-mx-runbook-expire --since -5min").stdout

    # Flush by domain: the deferred mail goes now instead of at its next retry.
    outcome = ok("flush", "-e", f"domain={DOMAIN}", "-l", node)
    flushed = results(outcome, "Retry the selected deferred messages now")[node]["results"][0]["flushed_ids"]
    assert set(ids) <= set(flushed)
    counts = wait_at_sink(records, f"rb-suspend-{RUN}", 60)
    assert len(counts) == 3, counts


def test_hold_and_release_report_exact_ids():
    node = "mx1"
    sink_service("stop")
    try:
        records = send(ADDRESS[node], f"rb-hold-{RUN}", 4)
        ids = sorted(r["queue_id"] for r in records)
        wait_for(lambda: len(ids_in(node, "deferred", ids)) == 4, 60, "4 deferred messages")
        pick = ids[:2]

        ok("hold", "-e", f"ids={','.join(pick)}", "-l", node, check=True)
        assert ids_in(node, "hold", ids) == [], "check mode held something"
        outcome = ok("hold", "-e", f"ids={','.join(pick)}", "-l", node)
        held = results(outcome, "Apply the action to the selected messages")[node]["results"][0]
        assert sorted(held["changed_ids"]) == pick, held
        assert ids_in(node, "hold", ids) == pick
        assert changed(ok("hold", "-e", f"ids={','.join(pick)}", "-l", node)) == 0

        outcome = ok("release", "-e", f"ids={','.join(pick)}", "-l", node)
        released = results(outcome, "Apply the action to the selected messages")[node]["results"][0]
        assert sorted(released["changed_ids"]) == pick, released
        assert ids_in(node, "hold", ids) == []
        assert changed(ok("release", "-e", f"ids={','.join(pick)}", "-l", node)) == 0
    finally:
        sink_service("start")
    ok("flush", "-e", f"domain={DOMAIN}", "-l", node)
    counts = wait_at_sink(records, f"rb-hold-{RUN}", 60)
    assert len(counts) == 4, counts


def test_resume_lifts_a_suspension_early():
    node = "mx1"
    ok("suspend", "-e", f"domain={DOMAIN}", "-e", "duration=10m", "-l", node)
    assert map_lookup(node).startswith("retry:")
    ok("resume", "-e", f"domain={DOMAIN}", "-l", node, check=True)
    assert map_lookup(node).startswith("retry:"), "check mode lifted the suspension"
    ok("resume", "-e", f"domain={DOMAIN}", "-l", node)
    assert map_lookup(node) == ""
    assert changed(ok("resume", "-e", f"domain={DOMAIN}", "-l", node)) == 0
    records = send(ADDRESS[node], f"rb-resume-{RUN}", 1)
    assert len(wait_at_sink(records, f"rb-resume-{RUN}", 60)) == 1


def test_throttle_routes_through_the_tier_and_expires():
    node = "mx2"
    sink = ADDRESS[SINK]
    args = ("-e", f"domain={DOMAIN}", "-e", "duration=60s", "-e", "tier=crawl", "-l", node)
    ok("throttle", *args, check=True)
    assert map_lookup(node) == ""
    ok("throttle", *args)
    assert map_lookup(node) == f"dmx_throttle_crawl:[{sink}]:25"
    assert sh(node, "postconf -h dmx_throttle_crawl_destination_rate_delay "
                    "dmx_throttle_crawl_destination_concurrency_limit").stdout.split() == ["10s", "1"]
    assert changed(ok("throttle", *args)) == 0
    records = send(ADDRESS[node], f"rb-throttle-{RUN}", 2)
    counts = wait_at_sink(records, f"rb-throttle-{RUN}", 60)
    assert len(counts) == 2, counts
    log = sh(node, "journalctl -q --since -3min -o cat | grep -E 'dmx_throttle_crawl|relay=' | tail -n 5", check=False).stdout
    print(f"\n[throttle] {log}")
    wait_for(lambda: map_lookup(node) == "", 120, "the throttle to expire")


def test_reroute_to_another_transport_then_resume():
    node = "mx2"
    route = f"relay:[{ADDRESS[SINK]}]:25"
    ok("reroute", "-e", f"domain={DOMAIN}", "-e", f"route={route}", "-l", node)
    assert map_lookup(node) == route
    assert changed(ok("reroute", "-e", f"domain={DOMAIN}", "-e", f"route={route}", "-l", node)) == 0
    records = send(ADDRESS[node], f"rb-reroute-{RUN}", 2)
    assert len(wait_at_sink(records, f"rb-reroute-{RUN}", 60)) == 2
    print("\n[reroute] " + sh(node, "journalctl -q --since -2min -o cat | grep -F 'status=sent' | tail -n 2", check=False).stdout)
    ok("resume", "-e", f"domain={DOMAIN}", "-l", node)
    assert map_lookup(node) == ""


def test_bounce_asks_first_then_returns_exactly_the_shown_mail():
    node = "mx1"
    # The sender is a lab mailbox, so the non-delivery reports end at the sink.
    sink_service("stop")
    try:
        records = send(ADDRESS[node], f"rb-bounce-{RUN}", 2, sender=f"postmaster@{DOMAIN}")
        ids = sorted(r["queue_id"] for r in records)
        wait_for(lambda: len(ids_in(node, "deferred", ids)) == 2, 60, "2 deferred messages")

        # Narrowed to this test's sender: the reports (null sender) to the lab domain stay out of it.
        select = ("-e", f"domain={DOMAIN}", "-e", f"sender=postmaster@{DOMAIN}", "-l", node)
        rc, outcome, _ = runbook("bounce", *select)  # no confirm, no terminal
        assert rc != 0 and any("Not confirmed" in f for f in failures(outcome)), failures(outcome)
        assert ids_in(node, "deferred", ids) == ids, "an unconfirmed bounce touched the queue"
        ok("bounce", *select, check=True)
        assert ids_in(node, "deferred", ids) == ids, "check mode bounced"

        outcome = ok("bounce", *select, "-e", "confirm=yes")
        shown = results(outcome, "Find the messages that would bounce")[node]["results"][0]["selected_ids"]
        assert set(ids) <= set(shown)
        wait_for(lambda: not ids_in(node, "deferred", ids) and not ids_in(node, "active", ids), 60,
                 "the bounced mail to leave")
        log = sh(node, "journalctl -q --since -3min -o cat", check=False).stdout
        for qid in ids:
            assert re.search(re.escape(qid) + r": .*status=(force-expired|expired|bounced)", log), f"{qid} not returned: {log[-1500:]}"
        print("\n[bounce] " + " / ".join(line for line in log.splitlines() if any(q in line for q in ids))[-1200:])
        assert changed(ok("bounce", *select, "-e", "confirm=yes")) == 0
    finally:
        sink_service("start")
    ok("flush", "-e", f"domain={DOMAIN}", "-l", node)


def test_drain_moves_the_vip_and_refuses_smtp_then_undrain():
    holder = vip_holders()
    assert len(holder) == 1, holder
    node = holder[0]
    peer = next(n for n in PRIMARIES if n != node)

    ok("drain", "-e", f"node={node}", "-e", "confirm=yes", check=True)
    assert vip_holders() == [node] and not smtp_refused(node), "check mode drained"

    outcome = ok("drain", "-e", f"node={node}", "-e", "confirm=yes")
    assert vip_holders() == [peer]
    assert smtp_refused(node)
    assert sh(node, "systemctl is-active keepalived", check=False).stdout.strip() != "active"
    print("\n[drain] " + " / ".join(messages(outcome, "Say what stays on the node")))
    again = ok("drain", "-e", f"node={node}", "-e", "confirm=yes")
    assert changed(again) == 0, changed_tasks(again)

    # Mail sent to the VIP meanwhile goes through the peer.
    records = send(VIP, f"rb-drain-{RUN}", 3)
    assert len(wait_at_sink(records, f"rb-drain-{RUN}", 60)) == 3

    ok("undrain", "-e", f"node={node}")
    assert not smtp_refused(node)
    assert sh(node, "systemctl is-active keepalived").stdout.strip() == "active"
    wait_for(lambda: len(vip_holders()) == 1, 30, "exactly one VIP holder")
    time.sleep(2)
    assert len(vip_holders()) == 1
    again = ok("undrain", "-e", f"node={node}")
    assert changed(again) == 0, changed_tasks(again)


def test_rolling_restart_keeps_one_vip_holder_and_loses_no_mail():
    tag = f"rb-rolling-{RUN}"
    sender = start_send(VIP, tag, 600, delay=0.2)
    holders_seen: list[list[str]] = []
    started = time.monotonic()
    rc, outcome, err = runbook("rolling-restart", "-e", "nodes=mx_primary", "-e", "confirm=yes")
    took = time.monotonic() - started
    assert rc == 0, f"{failures(outcome)} {err[-800:]}"
    for _ in range(3):
        holders_seen.append(vip_holders())
        time.sleep(1)
    records = finish_send(sender, tag)
    counts = wait_at_sink(records, tag, 180)
    acked = {r["message_id"] for r in records if r["code"] == 250 and r["queue_id"]}
    lost = acked - set(counts)
    figures = dict(sent=len(records), acked=len(acked), refused=len(records) - len(acked), delivered=len(counts),
                   lost=len(lost), duplicated=sum(n - 1 for n in counts.values()), restart_s=round(took, 1))
    print("\n[rolling restart] " + "  ".join(f"{k}={v}" for k, v in figures.items()))
    assert all(len(h) == 1 for h in holders_seen), holders_seen
    assert not lost, sorted(lost)[:10]
    # Each node's own check ran: exactly one holder after each node.
    checks = results(outcome, "Check that exactly one node holds each VIP")
    assert checks and not any(r.get("failed") for r in checks.values())


def test_integrity_scan_on_demand():
    node = "mx2"
    ok("integrity", "-e", f"nodes={node}", "-e", "instance=postfix", check=True)
    outcome = ok("integrity", "-e", f"nodes={node}", "-e", "instance=postfix", "-e", "confirm=yes")
    report = messages(outcome, "Show the reports")
    assert report and report[0].startswith(f"{node} postfix: scanned ") and ", quarantined 0" in report[0], report
    print("\n[integrity] " + " / ".join(report))
    assert not smtp_refused(node)
    wait_for(lambda: len(vip_holders()) == 1, 30, "exactly one VIP holder")
