"""Tenant instances: the declaration filter (plan, exporter list) and the node's instance list."""

from __future__ import annotations

import subprocess

import pytest
from ansible.errors import AnsibleFilterError

import postfix_instances as pi
import postfix_queue as pq

POLICY = {"first_retry": "1m", "max_interval": "10m", "give_up_after": "2d", "warn_after": "30m"}
TRANSACTIONAL = {"name": "transactional", "weight": 3, "listen": "2526", "queue_device": "/dev/vdc",
                 "retry_policy": POLICY}
BULK = {"name": "bulk", "weight": 1, "listen": "2527", "queue_device": "/dev/vdd", "nice": 10, "retry_policy": POLICY}


def test_plan_fills_in_names_paths_and_defaults():
    plan = pi.postfix_instance_plan([TRANSACTIONAL, BULK])
    bulk = plan[1]
    assert bulk["postmulti_name"] == "postfix-bulk"
    assert (bulk["config_dir"], bulk["queue_directory"], bulk["data_directory"]) == (
        "/etc/postfix-bulk", "/var/spool/postfix-bulk", "/var/lib/postfix-bulk")
    assert bulk["unit"] == "postfix@postfix-bulk.service"
    assert (bulk["state"], bulk["mail_class"], bulk["group"], bulk["queue_label"]) == ("present", "bulk", "bulk", "dmx-bulk")
    assert plan[0]["queue_label"] == "dmx-transact"  # XFS labels hold 12 characters
    assert bulk["transports"] is None, "None: the instance inherits the node's transports"
    assert pi.postfix_instance_plan(None) == [] and pi.postfix_instance_plan([]) == []


def test_absent_instance_needs_only_its_name():
    plan = pi.postfix_instance_plan([TRANSACTIONAL, {"name": "bulk", "state": "absent"}])
    assert plan[1]["state"] == "absent" and plan[1]["config_dir"] == "/etc/postfix-bulk"


@pytest.mark.parametrize("declared,fragment", [
    ([dict(TRANSACTIONAL), dict(TRANSACTIONAL, listen="2599", queue_device="/dev/vdx")], "names must differ"),
    ([TRANSACTIONAL, dict(BULK, queue_device="/dev/vdc")], "queue devices must differ"),
    ([TRANSACTIONAL, dict(BULK, listen="2526")], "listeners"),
    ([dict(BULK, listen="smtp")], "listens on port 25 of every address"),
    ([dict(BULK, queue_device="")], "needs queue_device"),
    ([{k: v for k, v in BULK.items() if k != "retry_policy"}], "needs retry_policy"),
    ([dict(BULK, name="Bulk")], "name 'Bulk'"),
    ([dict(BULK, nice=-5)], "nice=-5"),
    ([dict(BULK, weight="x")], "weight='x'"),
    ([dict(BULK, colour="red")], "unknown key(s) colour"),
    ([dict(BULK, state="gone")], "state='gone'"),
    ([dict(BULK, name="transactional1"), dict(TRANSACTIONAL, name="transactional2")], "queue volume labels"),
])
def test_plan_refuses_what_cannot_work_on_one_node(declared, fragment):
    with pytest.raises(AnsibleFilterError, match=None) as err:
        pi.postfix_instance_plan(declared)
    assert fragment in str(err.value)


def test_an_address_of_its_own_may_listen_on_port_25():
    plan = pi.postfix_instance_plan([dict(BULK, listen="smtp", inet_interfaces="192.0.2.25")])
    assert plan[0]["listen"] == "smtp"


def test_exporter_list_without_instances_is_the_historical_default():
    assert pi.postfix_instances_exporter([]) == [
        {"name": "postfix", "mail_class": "transactional", "config_dir": "/etc/postfix", "queue_directory": "/var/spool/postfix"}]


def test_exporter_list_labels_every_present_instance():
    listed = pi.postfix_instances_exporter([TRANSACTIONAL, BULK, {"name": "old", "state": "absent"}])
    assert [(i["name"], i["mail_class"]) for i in listed] == [
        ("postfix", "default"), ("postfix-transactional", "transactional"), ("postfix-bulk", "bulk")]
    assert listed[2]["queue_directory"] == "/var/spool/postfix-bulk"


def test_list_instances_reads_the_primary_and_its_multi_instance_directories():
    values = {
        None: ["postfix", "/etc/postfix", "/var/spool/postfix", "", "/etc/postfix-transactional, /etc/postfix-bulk"],
        "/etc/postfix-transactional": ["postfix-transactional", "/etc/postfix-transactional",
                                       "/var/spool/postfix-transactional", "transactional"],
        "/etc/postfix-bulk": ["postfix-bulk", "/etc/postfix-bulk", "/var/spool/postfix-bulk", "bulk"],
    }
    calls = []

    def runner(cmd, **_):
        calls.append(cmd)
        config_dir = cmd[cmd.index("-c") + 1] if "-c" in cmd else None
        return subprocess.CompletedProcess(cmd, 0, "\n".join(values[config_dir]) + "\n", "")

    found = pq.list_instances(runner)
    assert [(i["name"], i["group"], i["queue_directory"]) for i in found] == [
        ("postfix", "", "/var/spool/postfix"),
        ("postfix-transactional", "transactional", "/var/spool/postfix-transactional"),
        ("postfix-bulk", "bulk", "/var/spool/postfix-bulk")]
    assert all("-xh" in cmd for cmd in calls), "syslog_name's default is an expression: expand it"
