"""An instance marked absent is removed only once its queue is empty; nothing deletes mail.

The bulk instance first holds a message its sink cannot take (stopped): the role refuses, names
the instance and the count, and changes nothing. With the sink back and the queue flushed, the
same declaration removes it: stopped, unlisted, configuration gone, queue volume unmounted (its
data stays on the device), while the transactional instance runs on untouched.
"""

import json

import pytest

from conftest import run_module, wait_for
from tenant_lab import (MX, declared_instances, delivered_all, journal_cursor, mx, run_instances_playbook, send,
                        start_sinks, stop_sink, untouched_state)
from test_3_isolation import TRANS, check_untouched


@pytest.fixture(scope="module", autouse=True)
def sinks():
    start_sinks()


def bulk_count() -> int:
    outcome = run_module(MX, "postfix_queue_facts", {"config_dir": "/etc/postfix-bulk", "cache": "false"})
    return outcome["queue"]["total"]["count"]


def without_bulk() -> list:
    return [dict(i, state="absent") if i["name"] == "bulk" else i for i in declared_instances()]


def test_removal_is_refused_while_the_queue_holds_mail():
    host = mx()
    stop_sink("bulk")
    out = send("bulk", "stranded", 3)
    wait_for(lambda: bulk_count() == 3 and "deferred" in host.check_output(
        "postqueue -c /etc/postfix-bulk -j | head -1"), 120, "3 deferred bulk messages", 2)
    before = host.check_output("sha256sum /etc/postfix-bulk/main.cf /etc/postfix/main.cf")
    result = run_instances_playbook(without_bulk())
    assert result.returncode != 0
    assert "Not removing postfix-bulk holds 3 message(s)" in result.stdout
    assert host.service("postfix@postfix-bulk").is_running, "the refused instance keeps running"
    assert host.check_output("sha256sum /etc/postfix-bulk/main.cf /etc/postfix/main.cf") == before
    assert host.mount_point("/var/spool/postfix-bulk").exists
    assert bulk_count() == 3, "no message was deleted"
    # The sink back, the queue flushed: every stranded message is delivered, none lost.
    start_sinks()
    host.check_output("postqueue -c /etc/postfix-bulk -f")
    wait_for(lambda: delivered_all("bulk", out) and bulk_count() == 0, 120, "the stranded bulk mail delivered", 2)


def test_empty_instance_is_removed_and_transactional_runs_on():
    host = mx()
    before, cursor = untouched_state(TRANS), journal_cursor()
    assert bulk_count() == 0
    result = run_instances_playbook(without_bulk())
    assert result.returncode == 0
    assert not host.service("postfix@postfix-bulk").is_running
    assert "postfix-bulk" not in host.check_output("postmulti -l")
    assert host.check_output("postconf -h multi_instance_directories") == "/etc/postfix-transactional"
    for path in ("/etc/postfix-bulk", "/var/lib/postfix-bulk", "/etc/systemd/system/postfix@postfix-bulk.service.d",
                 "/etc/systemd/system/durable-mx-postfix-bulk.target"):
        assert not host.file(path).exists, path
    assert not host.mount_point("/var/spool/postfix-bulk").exists
    assert "/var/spool/postfix-bulk" not in host.file("/etc/fstab").content_string
    assert host.check_output("blkid -p -s LABEL -o value /dev/vdd") == "dmx-bulk", "the volume itself is kept"
    assert "postfix@postfix-bulk" not in host.check_output("systemctl show -p Wants --value postfix.service")
    out = send("transactional", "after-removal", 10, interval=0.1)
    wait_for(lambda: delivered_all("transactional", out), 60, "transactional mail after the removal", 1)
    check_untouched(before, cursor)
    facts = json.dumps(run_module(MX, "postfix_queue_facts", {"all_instances": "true"})["instances"])
    assert "postfix-bulk" not in facts
