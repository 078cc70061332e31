"""Pure logic of the postfix_queue module: selection, refusal, postsuper I/O."""

import subprocess

import pytest

import postfix_queue as pq
from conftest import CAPTURED_AT, FIXTURES

MESSAGES = pq.parse_postqueue_json((FIXTURES / "postqueue-j.jsonl").read_text())


def ids(**selectors):
    return sorted(m["queue_id"] for m in pq.select_messages(MESSAGES, CAPTURED_AT, **selectors))


def test_domain_selects_pending_recipient_domains_case_insensitively():
    assert ids(domain="TLS.test") == ["4jcN4933HfzD041", "4jcN493YCHzD04H"]
    assert len(ids(domain=".test")) == 17  # subdomain match


def test_sender_and_null_sender():
    assert ids(sender="Alice@fixtures.lab") == ["4jcN492rMTzD03w", "4jcN492xSVzD03t", "4jcN493YCHzD04H"]
    assert ids(sender="MAILER-DAEMON") == ids(sender="") == ["4jcN493JzwzD049"]


def test_selectors_combine():
    assert ids(queues=["hold"]) == ["4jcN493JzwzD049", "4jcN4t3zgczCyc2"]
    assert ids(queues=["hold"], domain="dns.test") == ["4jcN4t3zgczCyc2"]
    assert ids(min_age=60) == sorted(m["queue_id"] for m in MESSAGES if m["arrival_time"] <= CAPTURED_AT - 60)
    assert ids(queue_ids=["4jcN493RPvzD04F", "NOSUCHID"]) == ["4jcN493RPvzD04F"]


def test_unselective_delete_and_expire_are_refused():
    empty = {"queue": None, "domain": None, "sender": None, "min_age": None, "queue_ids": None}
    msg = pq.refuse_unselective("delete", empty, None)
    assert "yes-delete-all" in msg and "confirm=None" in msg
    assert pq.refuse_unselective("delete", empty, "yes") is not None
    assert pq.refuse_unselective("delete", empty, "yes-delete-all") is None
    assert pq.refuse_unselective("expire", empty, "yes-delete-all") is not None
    assert pq.refuse_unselective("expire", empty, "yes-expire-all") is None
    assert pq.refuse_unselective("hold", empty, None) is None
    assert pq.refuse_unselective("delete", dict(empty, queue_ids=[]), None) is not None
    assert pq.refuse_unselective("delete", dict(empty, domain="example.net"), None) is None


def test_one_postsuper_call_per_action_reading_stdin():
    assert pq.postsuper_command("hold", "/etc/postfix-out") == ["postsuper", "-c", "/etc/postfix-out", "-h", "-"]
    assert [pq.postsuper_command(a, None)[1] for a in ("release", "requeue", "delete", "expire")] == \
        ["-H", "-r", "-d", "-e"]


def test_postsuper_output_gives_the_changed_ids():
    # Captured from postsuper 3.7.11.
    output = """postsuper: 4jcN7z33gVzCyZZ: placed on hold
postsuper: 4jcN7z2yrJzCyZF: placed on hold
postsuper: Placed on hold: 2 messages
postsuper: 4jcN7z33gVzCyZZ: released from hold
postsuper: Released from hold: 1 message
postsuper: 4jcN7z2yrJzCyZF: requeued
postsuper: 4jcN8905MYzCyZs: expired
postsuper: Force-expired: 1 message
postsuper: 4jcN7z33gVzCyZZ: removed
postsuper: Deleted: 1 message
"""
    assert pq.parse_postsuper_output(output) == ["4jcN7z33gVzCyZZ", "4jcN7z2yrJzCyZF", "4jcN7z33gVzCyZZ",
                                                 "4jcN7z2yrJzCyZF", "4jcN8905MYzCyZs", "4jcN7z33gVzCyZZ"]


@pytest.mark.parametrize("value,seconds", [(300, 300), ("300", 300), ("90s", 90), ("5m", 300), ("4h", 14400),
                                           ("2d", 172800), ("1w", 604800)])
def test_parse_duration(value, seconds):
    assert pq.parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["4 hours", "-5m", "h", True, -1, "1.5h"])
def test_parse_duration_names_bad_values(value):
    with pytest.raises(ValueError, match="duration"):
        pq.parse_duration(value)


def test_queue_id_validation_blocks_stdin_injection():
    assert pq.postsuper_safe_id("4jcN493RPvzD04F") and pq.postsuper_safe_id("3F2A1B8C9")
    for bad in ("", "4jcN4\nALL", "../x", "id with space", "ALL", "all"):
        assert not pq.postsuper_safe_id(bad)


def _postconf_for(spool):
    """A stand-in for `postconf -h` of an instance whose queue is the fixture spool."""
    values = {"queue_directory": str(spool), "hash_queue_names": "deferred, defer", "hash_queue_depth": "1",
              "mail_owner": "postfix", "setgid_group": "postdrop"}

    def run(cmd, **_kwargs):
        return subprocess.CompletedProcess(cmd, 0, "\n".join(values[n] for n in cmd[cmd.index("-h") + 1:]) + "\n", "")
    return run


def test_selected_queue_ids_reads_the_instance_queue(spool):
    ids, errors = pq.selected_queue_ids("/etc/postfix", ["deferred", "hold"], runner=_postconf_for(spool))
    assert not errors
    assert ids == sorted(p.name for q in ("deferred", "hold") for p in (spool / q).rglob("*") if p.is_file())
    held, _ = pq.selected_queue_ids("/etc/postfix", ["hold"], runner=_postconf_for(spool))
    assert held == sorted(p.name for p in (spool / "hold").iterdir())
    one, _ = pq.selected_queue_ids("/etc/postfix", ["deferred", "hold"], queue_ids=[held[0]], runner=_postconf_for(spool))
    assert one == [held[0]]


@pytest.mark.parametrize("kwargs, message", [
    ({"queue_ids": ["ALL"]}, "queue_ids: 'ALL'"),
    ({"queue_ids": ["4jcN4; rm"]}, "queue_ids: '4jcN4; rm'"),
    ({"min_age": "soon"}, "min_age:"),
])
def test_selected_queue_ids_names_bad_selectors(spool, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pq.selected_queue_ids("/etc/postfix", ["deferred"], runner=_postconf_for(spool), **kwargs)


def test_selected_queue_ids_names_an_unreadable_config_dir():
    def failing(cmd, **_kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "postconf: fatal: open /etc/nope/main.cf: No such file")
    with pytest.raises(ValueError, match="config_dir=/etc/nope"):
        pq.selected_queue_ids("/etc/nope", ["deferred"], runner=failing)
