"""The reweight-tenants runbook: new weights give new process slots (tenant_slots), applied by a
reload of the instances whose files changed; check mode changes nothing; the same weights again
change nothing; mail keeps flowing."""

import json

import pytest

from conftest import run_playbook, task_result, wait_for
from tenant_lab import (declared_instances, delivered_all, filter_plugin, journal_cursor, master_pid, mx, reloads_since,
                        send, start_sinks)

RUNBOOK = "playbooks/runbooks/reweight-tenants.yml"
INSTANCES = ("postfix-transactional", "postfix-bulk")
EVEN = {"transactional": 1, "bulk": 1}


def _slots(weights: dict) -> dict:
    """What tenant_slots gives these weights with the scenario's 40 slots, at least 4 each."""
    return filter_plugin("tenant_slots").tenant_slots(weights, 40, 4)


def _as_limits(slots: dict) -> dict:
    return {f"postfix-{name}": limit for name, limit in slots.items()}


@pytest.fixture(scope="module", autouse=True)
def sinks():
    start_sinks()


def _limits() -> dict:
    return {i: int(mx().check_output(f"postconf -c /etc/{i} -h default_process_limit")) for i in INSTANCES}


def _reweight(weights: dict, *extra: str) -> dict:
    rc, outcome = run_playbook(RUNBOOK, "-e", json.dumps({"weights": weights}), *extra)
    assert rc == 0, json.dumps(outcome)[-2000:]
    return outcome


def _changed(outcome: dict) -> int:
    return sum(s["changed"] for s in outcome["stats"].values())


def test_reweight_moves_slots_by_reload_and_keeps_mail_flowing():
    declared = {i["name"]: i["weight"] for i in declared_instances()}
    assert declared == {"transactional": 3, "bulk": 1}
    before, even = _slots(declared), _slots(EVEN)
    assert before != even, "the new weights must move slots, or this tests nothing"
    print(f"\nlimits before: {_limits()}; tenant_slots: declared {before}, even {even}")
    assert _limits() == _as_limits(before)

    # Check mode shows the slots declared and new, and changes nothing.
    preview = _reweight(EVEN, "--check")
    shown = task_result(preview, "Show the process slots")["msg"]
    print(f"check mode: {shown}")
    assert shown == {"declared": before, "new": even}
    assert _limits() == _as_limits(before)

    pids, cursor = {i: master_pid(i) for i in (*INSTANCES, "postfix")}, journal_cursor()
    outcome = _reweight(EVEN)
    print(f"limits after: {_limits()}; changed tasks {_changed(outcome)}")
    assert _limits() == _as_limits(even)
    smtpd = mx().check_output("postconf -c /etc/postfix-bulk -M 2527/inet").split()
    assert smtpd[6] == str(even["bulk"])
    # Applied by reloads: each changed instance logged one, every master kept its process.
    for instance in INSTANCES:
        wait_for(lambda i=instance: reloads_since(cursor, i) == 1, 30, f"{instance} to log its reload")
    assert {i: master_pid(i) for i in pids} == pids
    assert reloads_since(cursor, "postfix") == 0, "the primary was reloaded"

    # The same weights again: nothing to do.
    assert _changed(_reweight(EVEN)) == 0

    out = send("transactional", "after-reweight", 20, interval=0.05)
    wait_for(lambda: delivered_all("transactional", out), 60, "transactional mail after the reweight", 1)
    print("20 transactional messages delivered after the reweight")


def test_unknown_tenant_is_refused_and_the_declared_weights_come_back():
    rc, outcome = run_playbook(RUNBOOK, "-e", json.dumps({"weights": {"marketing": 2}}))
    assert rc != 0
    refusal = task_result(outcome, "Check the arguments")
    print(f"\n{refusal['msg']}")
    assert "not declared: marketing" in refusal["msg"] and "(transactional, bulk)" in refusal["msg"]
    assert _limits() == _as_limits(_slots(EVEN))

    declared = {i["name"]: i["weight"] for i in declared_instances()}
    _reweight(declared)
    assert _limits() == _as_limits(_slots(declared))
