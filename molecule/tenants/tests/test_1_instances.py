"""Two tenant instances beside the primary: running, listening, each queue on its own volume,
limits from the tenant_slots filter, retry policies of their own, and every instance visible to
the exporter and the queue plugins, labelled by instance."""

import json

from conftest import run_module, wait_for
from tenant_lab import MX, PORT, declared_instances, filter_plugin, mx

INSTANCES = ("postfix-transactional", "postfix-bulk")


def _conf(instance: str) -> dict:
    return dict(line.split(" = ", 1) for line in mx().check_output(f"postconf -c /etc/{instance} -n").splitlines())


def test_postmulti_lists_both_instances_enabled_in_their_groups():
    rows = [line.split() for line in mx().check_output("postmulti -l").splitlines()]
    print("\npostmulti -l:\n" + "\n".join(" ".join(r) for r in rows))
    assert ["postfix-transactional", "transactional", "y", "/etc/postfix-transactional"] in rows
    assert ["postfix-bulk", "bulk", "y", "/etc/postfix-bulk"] in rows
    assert mx().check_output("postconf -h multi_instance_directories") == "/etc/postfix-transactional /etc/postfix-bulk"


def test_every_instance_runs_and_listens_on_its_own_port():
    host = mx()
    for unit in ("postfix@-", "postfix@postfix-transactional", "postfix@postfix-bulk"):
        assert host.service(unit).is_running, unit
    assert host.socket("tcp://0.0.0.0:25").is_listening
    for port in PORT.values():
        assert host.socket(f"tcp://0.0.0.0:{port}").is_listening
    # Debian's generator links each listed instance into postfix.service: they start at boot.
    wants = host.check_output("systemctl show -p Wants --value postfix.service")
    assert "postfix@postfix-transactional.service" in wants and "postfix@postfix-bulk.service" in wants
    for instance in ("", "-transactional", "-bulk"):
        result = host.run(f"postfix -c /etc/postfix{instance} check")
        assert result.rc == 0 and result.stdout + result.stderr == "", result.stderr


def test_each_queue_is_its_own_xfs_volume():
    host = mx()
    expected = {"/var/spool/postfix": "/dev/vdb", "/var/spool/postfix-transactional": "/dev/vdc",
                "/var/spool/postfix-bulk": "/dev/vdd"}
    root = json.loads(host.check_output("findmnt -J -o SOURCE --target /"))["filesystems"][0]["source"]
    fstab = host.file("/etc/fstab").content_string
    for target, device in expected.items():
        fs = json.loads(host.check_output(f"findmnt -J -o TARGET,SOURCE,FSTYPE,OPTIONS --mountpoint {target}"))["filesystems"][0]
        print(f"\n{target}: {fs['source']} {fs['fstype']} {fs['options']}")
        assert (fs["source"], fs["fstype"]) == (device, "xfs") and fs["source"] != root
        assert "noatime" in fs["options"].split(",")
        assert f"{device} {target} xfs noatime,nodiratime" in fstab
    assert host.check_output("blkid -p -s LABEL -o value /dev/vdd") == "dmx-bulk"
    for instance in INSTANCES:
        assert _conf(instance)["queue_directory"] == f"/var/spool/{instance}"
        assert host.file(f"/var/spool/{instance}/deferred").is_directory


def test_limits_come_from_tenant_slots_and_retries_from_each_policy():
    declared = {i["name"]: i for i in declared_instances()}
    slots = filter_plugin("tenant_slots").tenant_slots({n: i["weight"] for n, i in declared.items()}, 40, 4)
    retry = filter_plugin("retry_schedule").retry_schedule
    print(f"\nslots: {slots}")
    assert sum(slots.values()) == 40
    for name, instance in declared.items():
        conf = _conf(f"postfix-{name}")
        assert conf["default_process_limit"] == str(slots[name])
        assert conf["default_destination_concurrency_limit"] == str(min(20, slots[name]))
        assert conf["syslog_name"] == f"postfix-{name}" and conf["multi_instance_group"] == name
        assert conf["data_directory"] == f"/var/lib/postfix-{name}"
        for key, value in retry(instance["retry_policy"])["postfix"].items():
            assert conf[key] == value, (name, key)
        smtpd = mx().check_output(f"postconf -c /etc/postfix-{name} -M {instance['listen']}/inet").split()
        assert smtpd[6] == str(slots[name]) and smtpd[7] == "smtpd"
    trans, bulk = _conf("postfix-transactional"), _conf("postfix-bulk")
    assert int(bulk["minimal_backoff_time"][:-1]) > int(trans["minimal_backoff_time"][:-1])
    assert int(bulk["maximal_backoff_time"][:-1]) > int(trans["maximal_backoff_time"][:-1])
    assert mx().check_output("systemctl show -p Nice --value postfix@postfix-bulk") == "10"


def test_queue_facts_see_every_instance_labelled():
    outcome = run_module(MX, "postfix_queue_facts", {"all_instances": "true"})
    assert not outcome.get("failed"), outcome.get("msg")
    seen = {i["instance"]: (i["group"], i["queue_directory"]) for i in outcome["instances"]}
    print(f"\nqueue facts: {seen}")
    assert seen == {"postfix": ("", "/var/spool/postfix"),
                    "postfix-transactional": ("transactional", "/var/spool/postfix-transactional"),
                    "postfix-bulk": ("bulk", "/var/spool/postfix-bulk")}
    one = run_module(MX, "postfix_queue_facts", {"config_dir": "/etc/postfix-bulk"})
    assert one["queue"]["instance"] == "postfix-bulk"
    # The pre-start integrity scan ran for each instance (postfix@.service drop-in, --instance %i).
    for instance in INSTANCES:
        report = json.loads(mx().check_output(f"cat /run/durable-mx/integrity-{instance}.json"))
        assert report["queue_directory"] == f"/var/spool/{instance}" and not report["errors"], report


def test_exporter_exports_every_instance_with_its_class():
    config = json.loads(mx().check_output("cat /etc/durable-mx/exporter.json"))
    assert [(i["name"], i["mail_class"]) for i in config["instances"]] == [
        ("postfix", "default"), ("postfix-transactional", "transactional"), ("postfix-bulk", "bulk")]

    def up() -> dict:
        text = mx().check_output("python3 -c %s", "import urllib.request; print(urllib.request.urlopen("
                                 "'http://127.0.0.1:9154/metrics', timeout=10).read().decode())")
        return {line.split('"')[1]: line.split()[-1] for line in text.splitlines()
                if line.startswith("durablemx_postfix_up{")}

    wait_for(lambda: up() == {"postfix": "1.0", "postfix-transactional": "1.0", "postfix-bulk": "1.0"}, 90,
             "every instance up in the exporter", 3)
