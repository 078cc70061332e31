"""The fast paths of the queue reader give what the straightforward code gave.

Expected values were produced by the reader before it was optimised.
"""

import postfix_queue as pq


def _add_broken_files(spool):
    """A truncated deferred file and an unknown record type, for the errors list."""
    good = spool / "deferred" / "6" / "4jcN492xSVzD03t"
    data = good.read_bytes()
    (spool / "deferred" / "6" / "4jcN492xSVzD0AA").write_bytes(data[:40])
    (spool / "hold" / "4jcN493JzwzD0BB").write_bytes(b"?\x00" + data)
    for path in (spool / "deferred" / "6" / "4jcN492xSVzD0AA", spool / "hold" / "4jcN493JzwzD0BB"):
        path.chmod(0o700)


def test_forked_walk_matches_serial_walk(spool, monkeypatch):
    _add_broken_files(spool)
    serial = pq.walk_queue(str(spool))
    assert len(serial[1]) == 2
    monkeypatch.setattr(pq, "_worth_forking", lambda entries: True)
    forked = pq.walk_queue(str(spool))
    assert forked == serial
    assert [m["queue_id"] for m in forked[0]] == [m["queue_id"] for m in serial[0]]


def test_failed_child_falls_back_to_serial(spool, monkeypatch):
    _add_broken_files(spool)
    serial = pq.walk_queue(str(spool))

    class BrokenMarshal:
        loads = staticmethod(pq.marshal.loads)

        @staticmethod
        def dumps(value):
            raise RuntimeError("child cannot send")

    monkeypatch.setattr(pq, "_worth_forking", lambda entries: True)
    monkeypatch.setattr(pq, "marshal", BrokenMarshal)
    assert pq.walk_queue(str(spool)) == serial


def test_small_queues_are_read_in_one_process(spool, monkeypatch):
    messages, _ = pq.walk_queue(str(spool))
    assert len(messages) == 17
    assert not pq._worth_forking(messages)


def test_maildrop_size_is_the_file_size(spool):
    for path in (spool / "maildrop").iterdir():
        env = pq._read_queue_file(str(path))
        assert env == pq.read_message(str(path))
        assert env["message_size"] == path.stat().st_size


def test_defer_log_edge_cases_parse_as_before():
    data = (b"status=4.0.0\nrecipient=a@x.test\nreason=caf\xc3\xa9 \xe2\x82\nstatus=4.4.1\r\n"
            b"offset=1\nrecipient=b@y.test\naction=delayed\nreason=first\nreason=last\n"
            b"recipient=\xffc@z.test\nstatus=5.1.1")
    assert pq.parse_defer_log(data) == {
        "a@x.test": {"reason": "caf\u00e9 \ufffd", "status": "4.4.1\r"},
        "b@y.test": {"action": "delayed", "reason": "last"},
        "\ufffdc@z.test": {"status": "5.1.1"},
    }


def test_long_defer_log_is_read_up_to_the_limit(tmp_path):
    path = tmp_path / "log"
    path.write_bytes(b"x" * (pq.DEFER_LOG_LIMIT + 10))
    assert pq._read_small(str(path)) == b"x" * pq.DEFER_LOG_LIMIT
    path.write_bytes(b"y" * pq.HEAD_BYTES)
    assert pq._read_small(str(path)) == b"y" * pq.HEAD_BYTES


def test_summary_edge_cases_as_before():
    msgs = [
        {"queue_name": "deferred", "queue_id": "A", "arrival_time": 1000, "message_size": 10, "sender": "",
         "recipients": ["a@X.test", "b@y.test", "a@X.test"],
         "reasons": {"a@X.test": {"status": "4.4.1", "reason": "connect to x: Connection timed out"},
                     "gone@y.test": {"reason": "x"}, "b@y.test": {"status": "4.7.0"}}},
        {"queue_name": "weird", "queue_id": "B", "arrival_time": 5000, "message_size": None, "sender": "s",
         "recipients": ["local"], "reasons": {"local": "host said: 550 no"}},
        {"queue_name": "hold", "queue_id": "C", "arrival_time": 1000 - 86400, "message_size": 7, "sender": "s",
         "recipients": []},
        {"queue_name": "deferred", "queue_id": "D", "arrival_time": 4000 - 1200, "message_size": 3, "sender": "s",
         "recipients": ["c@y.test"],
         "reasons": {"c@y.test": {"status": "4.4.1", "reason": "connect to x: Connection timed out"}}},
    ]
    summary = pq.summarize(msgs, 4000.5, top_n=2)
    assert list(summary["queues"]) == list(pq.MESSAGE_QUEUES) + ["weird"]
    deferred = summary["queues"]["deferred"]
    assert list(deferred) == ["count", "bytes", "recipients", "oldest_age", "age_histogram", "top_domains"]
    assert deferred["count"] == 2 and deferred["bytes"] == 13 and deferred["recipients"] == 4
    assert deferred["oldest_age"] == 3000
    assert deferred["age_histogram"] == {"5": 0, "10": 0, "20": 0, "40": 1, "80": 1, "160": 0, "320": 0,
                                         "640": 0, "1280": 0, "1280+": 0}
    assert deferred["top_domains"] == [{"domain": "x.test", "count": 2}, {"domain": "y.test", "count": 2}]
    assert summary["queues"]["weird"]["oldest_age"] == 0
    assert summary["queues"]["weird"]["age_histogram"]["5"] == 1
    assert summary["queues"]["hold"]["age_histogram"]["1280+"] == 1
    assert summary["total"] == {"count": 4, "bytes": 20, "recipients": 5}
    assert summary["oldest_age"] == 89400
    assert summary["top_reasons"] == [
        {"class": "connect", "reason": "connect to x: Connection timed out", "count": 2},
        {"class": "5xx", "reason": "host said: 550 no", "count": 1}]
    assert summary["reason_classes"] == {"dns": 0, "connect": 2, "tls": 0, "4xx": 0, "5xx": 1, "other": 1}


def test_age_histogram_boundaries_match_age_bucket():
    ages = list(range(0, 1280 * 60 + 120, 7)) + [b * 60 + d for b in pq.AGE_BUCKETS_MINUTES for d in (-1, 0, 1)]
    msgs = [{"queue_name": "hold", "queue_id": str(i), "arrival_time": 10 ** 6 - age, "message_size": 1,
             "sender": "", "recipients": []} for i, age in enumerate(ages)]
    hist = pq.summarize(msgs, 10 ** 6)["queues"]["hold"]["age_histogram"]
    assert hist == pq.age_histogram(ages)
