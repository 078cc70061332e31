"""Postfix log parsing and following, against real captured journal and syslog output."""

import datetime
import json
import os
import stat
import sys
import threading
from collections import Counter

import pytest

import postfix_log as pl
from conftest import ROOT

LOGS = ROOT / "tests" / "fixtures" / "logs"


def _events(name, parse):
    return [parse(line) for line in (LOGS / name).read_text(encoding="utf-8").splitlines()]


def _tally(events):
    return Counter((e.instance, e.kind, e.status or e.dsn_class) for e in events if e is not None)


# --------------------------------------------------------------------------
# Fixtures as a whole


def test_scratch_journal_events():
    events = _events("journal.jsonl", pl.parse_journal_line)
    assert len(events) == 243
    assert _tally(events) == {
        ("postfix", "delivery", "sent"): 14, ("postfix", "delivery", "bounced"): 2,
        ("postfix", "delivery", "deferred"): 30, ("postfix", "expired", "expired"): 14,
        ("postfix", "connect", None): 4, ("postfix", "reject", "4"): 1, ("postfix", "reject", "5"): 1,
        ("postfix-sink", "connect", None): 7, ("postfix-sink", "reject", "5"): 1,
    }


def test_bench_journal_events():
    events = _events("bench-journal.jsonl", pl.parse_journal_line)
    assert _tally(events) == {("postfix", "connect", None): 15, ("postfix", "delivery", "deferred"): 16}
    deferred = [e for e in events if e and e.kind == "delivery"]
    assert {(e.program, e.dsn, e.dsn_class, e.relay) for e in deferred} == {("error", "4.4.1", "4", "none")}
    assert all(e.client == "unknown[127.0.0.1]" for e in events if e and e.kind == "connect")


@pytest.mark.parametrize("name,expected", [
    ("mail.log-rfc3339", {("postfix", "delivery", "sent"): 16, ("postfix", "delivery", "bounced"): 2,
                          ("postfix", "delivery", "deferred"): 44, ("postfix", "expired", "expired"): 14,
                          ("postfix", "connect", None): 4, ("postfix", "reject", "4"): 1, ("postfix", "reject", "5"): 1,
                          ("postfix-sink", "connect", None): 8, ("postfix-sink", "reject", "5"): 1}),
    ("mail.log-classic", {("postfix", "delivery", "sent"): 2, ("postfix", "delivery", "bounced"): 1,
                          ("postfix", "delivery", "deferred"): 26, ("postfix", "connect", None): 2,
                          ("postfix", "reject", "5"): 1, ("postfix-sink", "connect", None): 1}),
    ("postfix.log-maillog_file", {("postfix", "delivery", "sent"): 2, ("postfix", "delivery", "bounced"): 1,
                                  ("postfix", "delivery", "deferred"): 2, ("postfix", "connect", None): 1,
                                  ("postfix", "reject", "5"): 1, ("postfix-sink", "connect", None): 2,
                                  ("postfix-sink", "reject", "5"): 1}),
])
def test_syslog_file_events(name, expected):
    assert _tally(_events(name, pl.parse_syslog_line)) == expected


def test_journal_and_file_agree_on_every_event():
    """The same traffic seen through journald and through rsyslog's file gives the same events."""
    def key(e):
        return (e.kind, e.instance, e.program, e.queue_id, e.status, e.dsn, e.dsn_class, e.relay, e.delay,
                e.delays, e.client, e.stage, e.pid)
    journal = Counter(key(e) for e in _events("journal.jsonl", pl.parse_journal_line) if e)
    logfile = Counter(key(e) for e in _events("mail.log-rfc3339", pl.parse_syslog_line) if e)
    assert not journal - logfile  # the file goes on a little longer than the journal capture
    extra = logfile - journal
    assert sum(1 for k in extra.elements() if k[0] == "delivery" and k[4] == "sent") == 2


def test_journal_and_file_timestamps_agree():
    """rsyslog stamps a line when it gets it from journald: the same instant within a millisecond."""
    def key(e):
        return (e.queue_id, e.status, e.delay, e.delays, e.pid)
    logfile = {key(e): e.timestamp for e in _events("mail.log-rfc3339", pl.parse_syslog_line) if e and e.kind == "delivery"}
    journal = [e for e in _events("journal.jsonl", pl.parse_journal_line) if e and e.kind == "delivery"]
    assert len(journal) == 46
    assert all(0 <= logfile[key(e)] - e.timestamp < 0.01 for e in journal)


# --------------------------------------------------------------------------
# Single lines


SENT = ("Nov 28 12:00:00 host postfix/smtp[123]: 4F1AB2C3D: to=<a@b.test>, relay=sink[10.0.0.5]:25, "
        "delay=1.2, delays=0.1/0/0.5/0.6, dsn=2.0.0, status=sent (250 2.0.0 Ok)")


def test_the_delivery_line_of_the_spec():
    event = pl.parse_syslog_line(SENT, now=datetime.datetime(2025, 12, 1).timestamp())
    assert event == pl.LogEvent(
        "delivery", "postfix", "smtp", "postfix/smtp", queue_id="4F1AB2C3D", status="sent", dsn="2.0.0", dsn_class="2",
        relay="sink[10.0.0.5]:25", delay=1.2, delays=(0.1, 0.0, 0.5, 0.6),
        timestamp=datetime.datetime(2025, 11, 28, 12).timestamp(), host="host", pid=123)


def test_real_sent_line_through_the_sink():
    line = next(l for l in (LOGS / "mail.log-rfc3339").read_text().splitlines() if "to=<alice@sink.test>" in l
                and "postfix/smtp[" in l)
    event = pl.parse_syslog_line(line)
    assert (event.status, event.relay, event.delay, event.delays) == ("sent", "127.0.0.1[127.0.0.1]:2525", 0.09,
                                                                      (0.02, 0.01, 0.04, 0.01))
    assert event.timestamp == datetime.datetime(2026, 11, 29, 0, 3, 39, 385667, tzinfo=datetime.timezone.utc).timestamp()


@pytest.mark.parametrize("message,fields", [
    # orig_to (alias expansion) and conn_use (a reused connection)
    ("3Xq9f1Yz: to=<u@x.test>, orig_to=<alias@x.test>, relay=mx.x.test[192.0.2.1]:25, conn_use=2, delay=0.3, "
     "delays=0/0/0.1/0.2, dsn=2.0.0, status=sent (250 ok)", {"status": "sent", "relay": "mx.x.test[192.0.2.1]:25"}),
    ("3Xq9f1Yz: to=<u@x.test>, relay=mx.x.test[2001:db8::1]:25, delay=5, delays=0/0/5/0, dsn=4.4.2, "
     "status=deferred (conversation with mx.x.test[2001:db8::1] timed out while receiving the initial server greeting)",
     {"status": "deferred", "dsn_class": "4", "relay": "mx.x.test[2001:db8::1]:25", "delay": 5.0}),
    ("3Xq9f1Yz: to=<weird>,name@x.test>, relay=local, delay=0.01, delays=0/0/0/0, dsn=5.1.1, status=bounced (unknown user)",
     {"status": "bounced", "dsn": "5.1.1", "relay": "local"}),
])
def test_delivery_variants(message, fields):
    event = pl.parse_message("postfix/smtp", message)
    assert event.kind == "delivery"
    for name, value in fields.items():
        assert getattr(event, name) == value


@pytest.mark.parametrize("ident,message", [
    # address verification probes are not deliveries
    ("postfix/smtp", "3Xq9f1Yz: to=<u@x.test>, relay=mx[192.0.2.1]:25, delay=1, delays=0/0/0.5/0.5, dsn=2.1.5, "
                     "status=deliverable (250 2.1.5 Ok)"),
    ("postfix/smtp", "connect to 127.0.0.1[127.0.0.1]:9: Connection refused"),
    ("postfix/smtpd", "disconnect from unknown[127.0.0.1] helo=1 mail=1 rcpt=0/1 commands=2/3"),
    ("postfix/smtpd", "lost connection after CONNECT from unknown[127.0.0.1]"),
    ("postfix/smtpd", "NOQUEUE: reject_warning: RCPT from unknown[192.0.2.9]: 550 5.7.1 <a@b.test>: Relay access denied"),
    ("postfix/qmgr", "4jcS6g4MMYzD5fJ: from=<test@durable-mx.test>, size=287, nrcpt=1 (queue active)"),
    ("postfix/qmgr", "4jcS6g4MMYzD5fJ: removed"),
    ("sshd", "Accepted publickey for root from 192.0.2.1 port 2222"),
    ("postfix", "no slash, not a Postfix daemon"),
])
def test_lines_that_are_no_event(ident, message):
    assert pl.parse_message(ident, message) is None


def test_instance_and_program_of_nested_syslog_names():
    event = pl.parse_message("postfix-bulk/submission/smtpd", "connect from client.test[192.0.2.7]")
    assert (event.kind, event.instance, event.program, event.client) == ("connect", "postfix-bulk", "smtpd",
                                                                         "client.test[192.0.2.7]")
    assert pl.split_ident("postfix/relay/smtp") == ("postfix", "smtp")
    assert pl.split_ident("smtpd") is None


@pytest.mark.parametrize("message,stage,dsn_class,queue_id", [
    ("NOQUEUE: reject: RCPT from unknown[127.0.0.1]: 450 4.3.0 <a@relay-denied.test>: Recipient address rejected: "
     "lab nodes deliver only inside the lab; from=<x@example.test> to=<a@relay-denied.test> proto=ESMTP helo=<client.test>",
     "RCPT", "4", None),
    ("4jcS6g5HT5zD5fm: reject: RCPT from unknown[127.0.0.1]: 550 5.1.1 <nobody@durable-mx.test>: Recipient address "
     "rejected: User unknown in relay recipient table; from=<test@durable-mx.test> to=<nobody@durable-mx.test> "
     "proto=ESMTP helo=<client.test>", "RCPT", "5", "4jcS6g5HT5zD5fm"),
    ("NOQUEUE: reject: CONNECT from host.test[192.0.2.1]:4711: 554 5.7.1 <host.test[192.0.2.1]>: Client host rejected: "
     "Access denied; proto=SMTP", "CONNECT", "5", None),
    ("NOQUEUE: reject: RCPT from x[192.0.2.1]: 452 4.3.1 Insufficient system storage; proto=ESMTP", "RCPT", "4", None),
    ("3Xq9f1Yz: milter-reject: END-OF-MESSAGE from x[192.0.2.1]: 5.7.1 Command rejected; from=<a@b.test> "
     "to=<c@d.test> proto=ESMTP helo=<x>", "END-OF-MESSAGE", "5", "3Xq9f1Yz"),
    ("NOQUEUE: reject: MAIL from x[2001:db8::5]: 421 4.3.0 Server shutting down; proto=ESMTP", "MAIL", "4", None),
])
def test_smtpd_rejects(message, stage, dsn_class, queue_id):
    event = pl.parse_message("postfix/smtpd", message)
    assert (event.kind, event.stage, event.dsn_class, event.queue_id) == ("reject", stage, dsn_class, queue_id)


def test_expired_and_force_expired():
    for status in ("expired", "force-expired"):
        event = pl.parse_message("postfix/qmgr", "4jcS6g4MMYzD5fJ: from=<>, status=%s, returned to sender" % status)
        assert (event.kind, event.status, event.dsn_class, event.queue_id) == ("expired", "expired", "4", "4jcS6g4MMYzD5fJ")


@pytest.mark.parametrize("ident,message", [
    ("postfix/smtp", "3Xq9f1Yz: to=<u@x.test>, relay=mx, delay=abc, delays=0/0/0/0, dsn=2.0.0, status=sent (ok)"),
    ("postfix/smtp", "3Xq9f1Yz: to=<u@x.test>, relay=mx, delay=1, delays=0/0/0, dsn=2.0.0, status=sent (ok)"),
    ("postfix/qmgr", "3Xq9f1Yz: status=expired, returned to sender"),
    ("postfix/smtpd", "NOQUEUE: reject: RCPT from x[192.0.2.1]: no code here"),
])
def test_event_shaped_lines_that_do_not_parse_are_errors(ident, message):
    with pytest.raises(pl.LogParseError, match=ident):
        pl.parse_message(ident, message)


def test_journal_line_errors_and_byte_messages():
    with pytest.raises(pl.LogParseError, match="not JSON"):
        pl.parse_journal_line("{truncated")
    with pytest.raises(pl.LogParseError, match="not a JSON object"):
        pl.parse_journal_line("[1, 2]")
    last = (LOGS / "journal.jsonl").read_text().splitlines()[-1]
    entry = json.loads(last)
    assert isinstance(entry["MESSAGE"], list)  # journalctl's form of a non-UTF-8 value
    assert pl._journal_text(entry["MESSAGE"]) == "4jcZZZ: bad byte \ufffd here"
    assert pl.parse_journal_line(last) is None
    as_text = dict(entry, MESSAGE="connect from x[192.0.2.1]")
    assert pl.parse_journal_entry(as_text).instance == "postfix"
    assert pl.parse_journal_entry({"MESSAGE": "connect from x[192.0.2.1]"}) is None  # no identifier


def test_syslog_lines_that_are_not_postfix():
    assert pl.parse_syslog_line("2026-11-29T00:03:04.079952+00:00 host rsyslogd: [origin software=\"rsyslogd\"] start") is None
    assert pl.parse_syslog_line("garbage") is None
    assert pl.parse_syslog_line("") is None


# --------------------------------------------------------------------------
# Timestamps


def test_classic_timestamp_takes_the_year_that_is_not_in_the_future():
    jan = datetime.datetime(2027, 1, 2, 10, 0).timestamp()
    assert pl.parse_timestamp("Dec 31 23:59:59", now=jan) == datetime.datetime(2026, 12, 31, 23, 59, 59).timestamp()
    assert pl.parse_timestamp("Jan  2 09:59:00", now=jan) == datetime.datetime(2027, 1, 2, 9, 59).timestamp()
    assert pl.parse_timestamp("Foo  2 09:59:00", now=jan) is None


def test_rfc3339_timestamps():
    utc = datetime.datetime(2026, 11, 29, 0, 3, 4, 79952, tzinfo=datetime.timezone.utc).timestamp()
    assert pl.parse_timestamp("2026-11-29T00:03:04.079952+00:00") == utc
    assert pl.parse_timestamp("2026-11-29T00:03:04.079952Z") == utc
    assert pl.parse_timestamp("2026-11-29T01:03:04.079952+01:00") == utc


# --------------------------------------------------------------------------
# File follower


def _append(path, text, mode="a"):
    with open(path, mode) as handle:
        handle.write(text)


def test_file_follower_starts_at_the_end(tmp_path):
    log = tmp_path / "mail.log"
    _append(log, "old 1\nold 2\n")
    follower = pl.FileFollower(str(log))
    assert follower.poll() == []
    _append(log, "new 1\nnew")
    assert follower.poll() == ["new 1"]  # a partial line waits for its newline
    _append(log, " 2\n")
    assert follower.poll() == ["new 2"]
    follower.close()


def test_file_follower_survives_rotation(tmp_path):
    log = tmp_path / "mail.log"
    _append(log, "before\n")
    follower = pl.FileFollower(str(log))
    follower.poll()
    os.rename(log, tmp_path / "mail.log.1")
    _append(tmp_path / "mail.log.1", "written after the rename\n")  # the logger still has it open
    assert follower.poll() == ["written after the rename"]  # no new file yet: keep reading the old one
    _append(tmp_path / "mail.log.1", "last old line, unterminated")
    _append(log, "first new line\n")
    assert follower.poll() == ["last old line, unterminated", "first new line"]
    _append(log, "second new line\n")
    assert follower.poll() == ["second new line"]
    follower.close()


def test_file_follower_survives_truncation(tmp_path):
    log = tmp_path / "mail.log"
    _append(log, "a fairly long line that was there before\n")
    follower = pl.FileFollower(str(log))
    follower.poll()
    _append(log, "one more line before copytruncate\n")
    assert follower.poll() == ["one more line before copytruncate"]
    _append(log, "", mode="w")  # truncate in place, same inode
    _append(log, "after\n")
    assert follower.poll() == ["after"]
    follower.close()


def test_file_follower_reads_a_file_that_appears_later_from_its_start(tmp_path):
    log = tmp_path / "mail.log"
    follower = pl.FileFollower(str(log))
    assert follower.poll() == []
    _append(log, "first\nsecond\n")
    assert follower.poll() == ["first", "second"]
    follower.close()


def test_file_follower_lines_until_stopped(tmp_path):
    log = tmp_path / "mail.log"
    log.write_text("")
    follower = pl.FileFollower(str(log), poll_interval=0.01)
    got = []

    def consume():
        for line in follower.lines():
            got.append(line)
            if len(got) == 2:
                follower.stop()

    follower.poll()  # opened (at its end) before the consumer and the writer start
    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    _append(log, "x\ny\n")
    thread.join(5)
    follower.stop()
    assert not thread.is_alive() and got == ["x", "y"]


def test_real_log_lines_through_the_file_follower(tmp_path):
    log = tmp_path / "mail.log"
    log.write_text("")
    follower = pl.FileFollower(str(log))
    follower.poll()
    _append(log, (LOGS / "mail.log-rfc3339").read_text())
    events = [pl.parse_syslog_line(line) for line in follower.poll()]
    assert _tally(events)[("postfix", "delivery", "sent")] == 16


# --------------------------------------------------------------------------
# Journal follower


def test_journal_command():
    assert pl.journal_command() == ["journalctl", "--follow", "--quiet", "--output=json", "--no-pager", "--lines=0"]
    assert pl.journal_command(["postfix/smtp"], ["postfix@-.service"], after_cursor="s=1;i=2") == [
        "journalctl", "--follow", "--quiet", "--output=json", "--no-pager", "--after-cursor=s=1;i=2",
        "--identifier=postfix/smtp", "--unit=postfix@-.service"]


def test_journal_follower_restarts_after_the_last_cursor(tmp_path):
    """A stand-in journalctl prints real entries and exits; the follower starts it again after the cursor."""
    entries = (LOGS / "journal.jsonl").read_text().splitlines()
    fake = tmp_path / "journalctl"
    fake.write_text("#!%s\nimport sys\nopen(%r, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
                    "sys.stdout.write(open(%r).read())\n" % (sys.executable, str(tmp_path / "calls"), str(tmp_path / "out")))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "out").write_text("\n".join(entries[:3]) + "\n")
    follower = pl.JournalFollower(identifiers=["postfix/smtpd"], journalctl=str(fake), restart_delay=0)
    got = []
    for line in follower.lines():
        got.append(line)
        if len(got) == 6:
            follower.stop()
    assert got == entries[:3] * 2
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0].endswith("--lines=0 --identifier=postfix/smtpd")
    cursor = json.loads(entries[2])["__CURSOR"]
    assert "--after-cursor=%s " % cursor in calls[1]
    assert follower.restarts == 1
