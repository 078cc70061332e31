"""The reweight-tenants runbook: new weights give new process slots (tenant_slots), applied by a
reload of the instances whose files changed; check mode changes nothing; the same weights again
change nothing; mail keeps flowing."""

import json

import pytest

from conftest import run_playbook, task_result, wait_for
from tenant_lab import declared_instances, delivered_all, journal_cursor, master_pid, mx, reloads_since, send, start_sinks

RUNBOOK = "playbooks/runbooks/reweight-tenants.yml"
INSTANCES = ("postfix-transactional", "postfix-bulk")


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
    before = _limits()
    print(f"\nlimits before: {before}")
    assert before == {"postfix-transactional": 30, "postfix-bulk": 10}

    # Check mode shows the slots before and after and changes nothing.
    preview = _reweight({"transactional": 1, "bulk": 1}, "--check")
    shown = task_result(preview, "Show the process slots")["msg"]
    print(f"check mode: {shown}")
    assert shown == {"declared": {"transactional": 30, "bulk": 10}, "new": {"transactional": 20, "bulk": 20}}
    assert _limits() == before

    pids, cursor = {i: master_pid(i) for i in (*INSTANCES, "postfix")}, journal_cursor()
    outcome = _reweight({"transactional": 1, "bulk": 1})
    after = _limits()
    print(f"limits after: {after}; changed tasks {_changed(outcome)}")
    assert after == {"postfix-transactional": 20, "postfix-bulk": 20}
    smtpd = mx().check_output("postconf -c /etc/postfix-bulk -M 2527/inet").split()
    assert smtpd[6] == "20"
    # Applied by reloads: each changed instance logged one, every master kept its process.
    for instance in INSTANCES:
        wait_for(lambda i=instance: reloads_since(cursor, i) == 1, 30, f"{instance} to log its reload")
    assert {i: master_pid(i) for i in pids} == pids
    assert reloads_since(cursor, "postfix") == 0, "the primary was reloaded"

    # The same weights again: nothing to do.
    assert _changed(_reweight({"transactional": 1, "bulk": 1})) == 0

    out = send("transactional", "after-reweight", 20, interval=0.05)
    wait_for(lambda: delivered_all("transactional", out), 60, "transactional mail after the reweight", 1)
    print("20 transactional messages delivered after the reweight")


def test_unknown_tenant_is_refused_and_the_declared_weights_come_back():
    rc, outcome = run_playbook(RUNBOOK, "-e", json.dumps({"weights": {"marketing": 2}}))
    assert rc != 0
    refusal = task_result(outcome, "Check the arguments")
    print(f"\n{refusal['msg']}")
    assert "not declared: marketing" in refusal["msg"] and "(transactional, bulk)" in refusal["msg"]
    assert _limits() == {"postfix-transactional": 20, "postfix-bulk": 20}

    _reweight({i["name"]: i["weight"] for i in declared_instances()})
    assert _limits() == {"postfix-transactional": 30, "postfix-bulk": 10}
