"""Stopping, reloading or reconfiguring the bulk instance leaves the transactional one untouched:
same master process, same configuration files, no reload in its log, and it keeps delivering."""

import pytest

from conftest import wait_for
from tenant_lab import (config_sums, declared_instances, delivered_all, journal_cursor, master_pid, mx,
                        reloads_since, run_instances_playbook, send, start_sinks, untouched_state)

TRANS = "postfix-transactional"
BULK = "postfix-bulk"


@pytest.fixture(scope="module", autouse=True)
def sinks():
    start_sinks()


def check_untouched(before: dict, cursor: str) -> None:
    after = untouched_state(TRANS)
    print(f"transactional before {before['pid']} {before['active_since']}, after {after['pid']} {after['active_since']}; "
          f"reloads since: {reloads_since(cursor, TRANS)}")
    assert after == before, "the transactional instance was restarted or reconfigured"
    assert reloads_since(cursor, TRANS) == 0, "the transactional instance was reloaded"


def test_stopping_the_bulk_group_leaves_transactional_delivering():
    host = mx()
    before, cursor = untouched_state(TRANS), journal_cursor()
    host.check_output("systemctl stop durable-mx-postfix-bulk.target")
    try:
        assert not host.service("postfix@postfix-bulk").is_running
        assert not host.socket("tcp://0.0.0.0:2527").is_listening
        out = send("transactional", "bulk-stopped", 20, interval=0.1)
        wait_for(lambda: delivered_all("transactional", out), 60, "transactional mail while bulk is stopped", 1)
        print("\nbulk stopped: 20 transactional messages delivered")
        check_untouched(before, cursor)
    finally:
        host.check_output("systemctl start durable-mx-postfix-bulk.target")
    wait_for(lambda: host.socket("tcp://0.0.0.0:2527").is_listening, 60, "bulk listening again")
    assert host.service("postfix@postfix-bulk").is_running


def test_reloading_bulk_reloads_only_bulk():
    before, cursor = untouched_state(TRANS), journal_cursor()
    bulk_pid = master_pid(BULK)
    mx().check_output("systemctl reload postfix@postfix-bulk")
    wait_for(lambda: reloads_since(cursor, BULK) == 1, 30, "the bulk master to log its reload")
    assert master_pid(BULK) == bulk_pid, "a reload keeps the master process"
    check_untouched(before, cursor)


def test_reconfiguring_bulk_through_the_role_touches_only_bulk():
    """A changed bulk declaration, applied by role postfix_instances to every instance."""
    before, cursor = untouched_state(TRANS), journal_cursor()
    primary_pid = master_pid("postfix")
    bulk_before, bulk_pid = config_sums(BULK), master_pid(BULK)
    instances = declared_instances()
    for instance in instances:
        if instance["name"] == "bulk":
            instance["parameters"] = [{"name": "smtpd_banner", "value": "$myhostname ESMTP bulk"}]
    result = run_instances_playbook(instances)
    assert result.returncode == 0
    assert "changed=" in result.stdout
    assert config_sums(BULK) != bulk_before
    assert mx().check_output("postconf -c /etc/postfix-bulk -h smtpd_banner") == "$myhostname ESMTP bulk"
    wait_for(lambda: reloads_since(cursor, BULK) == 1, 30, "the bulk master to log its reload")
    assert master_pid(BULK) == bulk_pid and master_pid("postfix") == primary_pid
    assert reloads_since(cursor, "postfix") == 0, "the primary was reloaded"
    check_untouched(before, cursor)
