"""Queue reading against real Postfix 3.7 queue files and postqueue -j output."""

import os
import tempfile
from pathlib import Path

import pytest

import postfix_queue as pq
from conftest import CAPTURED_AT, FIXTURES, install_spool

POSTQUEUE = pq.parse_postqueue_json((FIXTURES / "postqueue-j.jsonl").read_text())


def _key(msg):
    return (msg["queue_name"], msg["arrival_time"], msg["message_size"], msg["sender"], sorted(msg["recipients"]))


def test_postqueue_json_parses_every_line():
    assert len(POSTQUEUE) == 17
    first = next(m for m in POSTQUEUE if m["queue_id"] == "4jcN492xSVzD03t")
    assert first["queue_name"] == "deferred"
    assert first["recipients"] == ["carol@conn.test", "dave@conn.test"]
    assert first["reasons"]["carol@conn.test"].endswith("Connection timed out")
    maildrop = [m for m in POSTQUEUE if m["queue_name"] == "maildrop"]
    assert maildrop and all(m["reasons"] == {} for m in maildrop)
    bounce = next(m for m in POSTQUEUE if m["queue_id"] == "4jcN493JzwzD049")
    assert bounce["sender"] == ""  # shown as MAILER-DAEMON


def test_postqueue_json_names_the_bad_line():
    with pytest.raises(ValueError, match="line 2"):
        pq.parse_postqueue_json('{"queue_name": "hold", "queue_id": "A", "arrival_time": 1, '
                                '"message_size": 1, "sender": "", "recipients": []}\nnot json\n')


def test_walk_matches_postqueue_for_every_message(spool):
    messages, errors = pq.walk_queue(str(spool))
    assert errors == []
    walked = {m["queue_id"]: m for m in messages}
    assert set(walked) == {m["queue_id"] for m in POSTQUEUE}
    for expected in POSTQUEUE:
        got = walked[expected["queue_id"]]
        assert _key(got) == _key(expected), expected["queue_id"]
        reasons = {rcpt: info["reason"] for rcpt, info in got.get("reasons", {}).items()}
        assert reasons == expected["reasons"], expected["queue_id"]


def test_done_recipient_is_not_pending(spool):
    messages, _ = pq.walk_queue(str(spool), queues=["deferred"])
    smtp = next(m for m in messages if m["queue_id"] == "4jcN4j5Dp0zCyc0")
    assert "kim@done.test" not in smtp["recipients"]  # delivered: a D record
    assert len(smtp["recipients"]) == 3


def test_depth2_tree_reads_the_same(tmp_path):
    deep = install_spool(FIXTURES / "spool-depth2", tmp_path / "deep")
    messages, errors = pq.walk_queue(str(deep), queues=["deferred", "hold"])
    assert errors == []
    expected = {m["queue_id"]: _key(m) for m in POSTQUEUE if m["queue_name"] in ("deferred", "hold")}
    assert {m["queue_id"]: _key(m) for m in messages} == expected
    assert all(m.get("reasons") for m in messages if m["queue_name"] == "deferred")


@pytest.mark.parametrize("tree,depth,hashed", [("spool-depth1", 1, ("deferred", "defer")),
                                               ("spool-depth2", 2, ("deferred", "defer", "hold"))])
def test_hash_dirs_match_where_postfix_put_files(tree, depth, hashed):
    checked = 0
    for queue in hashed:
        for path in (FIXTURES / tree / queue).rglob("*"):
            if path.is_file():
                expected = FIXTURES / tree / queue / Path(*pq.hash_dirs(path.name, depth))
                assert path.parent == expected, path
                checked += 1
    assert checked >= 14


def test_short_queue_ids_hash_on_their_own_characters():
    assert pq.hash_key("3F2A1B8C9") == "3F2A1B8C9"
    assert pq.hash_dirs("3F2A1B8C9", 2) == ["3", "F"]


def test_multibyte_record_length():
    record = b"S" + bytes([0x8D, 0x01]) + b"x" * 141
    assert pq.parse_record(record, 0) == (ord("S"), 3, 144)


def test_every_real_queue_file_is_structurally_complete():
    count = 0
    for queue in ("maildrop", "incoming", "deferred", "hold"):
        for path in (FIXTURES / "spool-depth1" / queue).rglob("*"):
            if path.is_file():
                fd = os.open(path, os.O_RDONLY)
                try:
                    env = pq.check_structure(fd, path.stat().st_size)
                finally:
                    os.close(fd)
                assert env["arrival_time"] > 0
                count += 1
    assert count == 17


def _structure_error(data: bytes) -> str:
    with tempfile.TemporaryFile() as handle:
        handle.write(data)
        handle.flush()
        with pytest.raises(pq.QueueFileError) as info:
            pq.check_structure(handle.fileno(), len(data))
    return info.value.kind


def test_truncated_and_unknown_records_are_detected():
    data = (FIXTURES / "spool-depth1/deferred/7/4jcN493RPvzD04F").read_bytes()
    assert _structure_error(data[:-40]) == "truncated"
    assert _structure_error(data[:300]) == "truncated"
    assert _structure_error(data[:-2]) == "truncated"  # END record gone
    assert _structure_error(data[:-2] + b"Q\x00") == "unknown-record"
    t_at = pq.parse_record(data, 0)[2]  # the T record follows C
    assert data[t_at:t_at + 1] == b"T"
    head_bad = data[:t_at] + b"?" + data[t_at + 1:]
    assert _structure_error(head_bad) == "unknown-record"


def test_defer_log_parsing():
    data = (FIXTURES / "spool-depth1/defer/7/4jcN493RPvzD04F").read_bytes()
    log = pq.parse_defer_log(data)
    assert set(log) == {"mallory@dns.test", "judy@grey.test", "ivan@other.test"}
    assert log["judy@grey.test"]["status"] == "4.7.1"
    assert log["ivan@other.test"] == {"status": "4.0.0", "action": "delayed", "reason": "lab fixtures"}


@pytest.mark.parametrize("reason,status,expected", [
    ("Host or domain name not found. Name service error for name=dns.test type=MX: Host not found, try again",
     "4.4.3", "dns"),
    ("connect to mx.conn.test[127.0.0.9]:25: Connection timed out", "4.4.1", "connect"),
    ("connect to mx.refused.test[127.0.0.9]:25: Connection refused", "4.4.1", "connect"),
    ("connect to mx.example[2001:db8::1]:25: Network is unreachable", None, "connect"),
    ("conversation with mx.example[192.0.2.1] timed out while receiving the initial server greeting", None,
     "connect"),
    ("TLS is required, but host mx.tls.test[127.0.0.9] refused to start TLS: 454 4.7.0 TLS not available",
     "4.7.5", "tls"),
    ("Server certificate not verified", "4.7.5", "tls"),
    ("host mx.grey.test[127.0.0.9] said: 451 4.7.1 Greylisted, try again later (in reply to RCPT TO command)",
     "4.7.1", "4xx"),
    ("host mx.example[192.0.2.1] refused to talk to me: 421 4.7.0 Too many connections", None, "4xx"),
    ("host mx.reject.test[127.0.0.9] said: 550 5.1.1 <bob@reject.test>: Recipient address rejected: "
     "User unknown (in reply to RCPT TO command)", "5.1.1", "5xx"),
    ("lab fixtures", "4.0.0", "other"),
    ("delivery temporarily suspended", "4.4.2", "connect"),
    ("", "4.4.4", "dns"),
    (None, None, "other"),
])
def test_classify_reason(reason, status, expected):
    assert pq.classify_reason(reason, status) == expected


@pytest.mark.parametrize("seconds,bucket", [(0, "5"), (299, "5"), (300, "10"), (599, "10"), (600, "20"),
                                            (1199, "20"), (38399, "640"), (38400, "1280"), (76799, "1280"),
                                            (76800, "1280+"), (10 ** 7, "1280+")])
def test_age_buckets_follow_qshape(seconds, bucket):
    assert pq.age_bucket(seconds) == bucket


def test_histogram_counts_everything():
    hist = pq.age_histogram([0, 301, 301, 10 ** 6])
    assert list(hist) == list(pq.AGE_BUCKET_KEYS)
    assert hist["5"] == 1 and hist["10"] == 2 and hist["1280+"] == 1 and sum(hist.values()) == 4


def test_summary_of_the_fixture_queue(spool):
    messages, _ = pq.walk_queue(str(spool))
    summary = pq.summarize(messages, CAPTURED_AT, top_n=3)
    queues = summary["queues"]
    assert {q: queues[q]["count"] for q in pq.MESSAGE_QUEUES} == {
        "maildrop": 2, "incoming": 1, "active": 0, "deferred": 12, "hold": 2, "corrupt": 0}
    assert queues["deferred"]["bytes"] == sum(m["message_size"] for m in POSTQUEUE if m["queue_name"] == "deferred")
    assert summary["total"]["count"] == 17
    assert summary["oldest_age"] == CAPTURED_AT - 1795899673
    assert summary["top_domains"][0] == {"domain": "conn.test", "count": 7}
    assert len(summary["top_reasons"]) == 3
    assert summary["reason_classes"] == {"dns": 5, "connect": 7, "tls": 2, "4xx": 4, "5xx": 1, "other": 2}


def test_summary_from_postqueue_matches_summary_from_files(spool):
    messages, _ = pq.walk_queue(str(spool))
    from_files = pq.summarize(messages, CAPTURED_AT)
    from_postqueue = pq.summarize(POSTQUEUE, CAPTURED_AT)
    for key in ("queues", "total", "oldest_age", "top_domains", "top_reasons"):
        assert from_files[key] == from_postqueue[key], key


def test_cache_reuses_unchanged_files(spool, monkeypatch):
    cache = pq.EnvelopeCache()
    first, _ = pq.walk_queue(str(spool), cache=cache)
    reads = []
    real = pq._read_queue_file
    monkeypatch.setattr(pq, "_read_queue_file", lambda path: reads.append(path) or real(path))
    victim = next(spool.glob("deferred/7/4jcN493RPvzD04F"))
    os.utime(victim, (1, 1))  # what qmgr does to a deferred file: sets its ctime
    second, _ = pq.walk_queue(str(spool), cache=cache)
    assert reads == [str(victim)]
    assert sorted(_key(m) for m in first) == sorted(_key(m) for m in second)


def test_cache_rereads_a_message_whose_defer_log_changed(spool, monkeypatch):
    cache = pq.EnvelopeCache()
    pq.walk_queue(str(spool), cache=cache)
    log = next(spool.glob("defer/7/4jcN493RPvzD04F"))
    text = log.read_text().replace("reason=", "reason=changed ", 1)
    log.write_text(text)
    messages, _ = pq.walk_queue(str(spool), cache=cache)
    msg = next(m for m in messages if m["queue_id"] == "4jcN493RPvzD04F")
    assert any(r["reason"].startswith("changed ") for r in msg["reasons"].values())


def test_cache_survives_save_and_load_and_forgets_gone_files(spool, tmp_path):
    path = str(tmp_path / "cache" / "facts")
    cache = pq.EnvelopeCache()
    first, _ = pq.walk_queue(str(spool), cache=cache)
    cache.save(path)
    loaded = pq.EnvelopeCache.load(path)
    assert len(loaded) == len(first) and not loaded.changed
    next(spool.glob("deferred/7/4jcN493RPvzD04F")).unlink()
    second, _ = pq.walk_queue(str(spool), cache=loaded)
    assert len(second) == len(first) - 1 and len(loaded) == len(second) and loaded.changed
    (tmp_path / "cache" / "facts").write_bytes(b"garbage")
    assert len(pq.EnvelopeCache.load(path)) == 0


