"""The mail-counting harness itself: a loopback round trip through its own SMTP sink."""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "mailcount.py"
spec = importlib.util.spec_from_file_location("mailcount", TOOL)
mailcount = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mailcount)


@pytest.fixture()
def sink(tmp_path: Path):
    server = mailcount.SinkServer(("127.0.0.1", 0), tmp_path / "mail", fsync=True)
    (tmp_path / "mail").mkdir()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _send(sink, tmp_path: Path, count: int) -> Path:
    out = tmp_path / "acks.jsonl"
    mailcount.main(["send", "--host", "127.0.0.1", "--port", str(sink.server_address[1]), "--count", str(count),
                    "--parallel", "2", "--rcpt", "r@mailcount.test", "--out", str(out), "--size", "700"])
    return out


def test_every_acknowledged_message_is_found_intact(sink, tmp_path: Path, capsys) -> None:
    out = _send(sink, tmp_path, 20)
    capsys.readouterr()
    mailcount.main(["check-dir", "--acks", str(out), "--dir", str(sink.directory)])
    figures = json.loads(capsys.readouterr().out)
    assert figures["sent"] == figures["acked"] == figures["present"] == 20
    assert figures["lost"] == figures["corrupt"] == 0


def test_lost_and_corrupt_messages_are_counted(sink, tmp_path: Path, capsys) -> None:
    out = _send(sink, tmp_path, 6)
    files = sorted(sink.directory.glob("*.eml"))
    files[0].unlink()
    files[1].write_bytes(files[1].read_bytes().replace(b"message", b"massage"))
    capsys.readouterr()
    mailcount.main(["check-dir", "--acks", str(out), "--dir", str(sink.directory)])
    figures = json.loads(capsys.readouterr().out)
    assert (figures["acked"], figures["present"], figures["lost"], figures["corrupt"]) == (6, 4, 1, 1)


def test_refused_connections_are_errors_not_acks(tmp_path: Path, capsys) -> None:
    out = tmp_path / "acks.jsonl"
    # Port 9 on loopback: nothing listens, every attempt is refused.
    mailcount.main(["send", "--host", "127.0.0.1", "--port", "9", "--count", "3", "--rcpt", "r@mailcount.test",
                    "--out", str(out), "--reconnect-delay", "0"])
    figures = json.loads(capsys.readouterr().out)
    assert figures["acked"] == 0 and figures["errors"] == 3


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert mailcount.percentile(values, 50) == 50.0
    assert mailcount.percentile(values, 99) == 99.0
    assert mailcount.percentile([3.0], 99) == 3.0
    assert mailcount.percentile([], 50) is None


def test_slow_logging_sink_and_latency(tmp_path: Path, capsys) -> None:
    """A sink with --delay answers late; its arrival log matches the sender's acks by Message-ID."""
    log = mailcount.Results(tmp_path / "arrivals.jsonl")
    server = mailcount.SinkServer(("127.0.0.1", 0), tmp_path / "mail", fsync=False, delay=0.05, log=log)
    (tmp_path / "mail").mkdir()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "acks.jsonl"
        mailcount.main(["send", "--host", "127.0.0.1", "--port", str(server.server_address[1]), "--count", "5",
                        "--rcpt", "r@mailcount.test", "--out", str(out), "--size", "300", "--interval", "0.02"])
        sent = json.loads(capsys.readouterr().out)
    finally:
        server.shutdown()
        server.server_close()
        log.close()
    records = mailcount.load(str(out))
    assert sent["acked"] == 5 and sent["seconds"] >= 5 * 0.05, "each 250 waits for the sink's delay"
    assert all(r["acked_at"] for r in records)
    arrivals = mailcount.load(str(tmp_path / "arrivals.jsonl"))
    assert sorted(a["message_id"] for a in arrivals) == sorted(r["message_id"] for r in records)
    mailcount.main(["latency", "--acks", str(out), "--arrivals", str(tmp_path / "arrivals.jsonl")])
    figures = json.loads(capsys.readouterr().out)
    # Sent straight to the sink: it logged each arrival before its delayed 250, so latency < 0.
    assert (figures["acked"], figures["delivered"], figures["missing"]) == (5, 5, 0)
    assert figures["p99_ms"] < 0


def test_latency_counts_missing_and_ignores_refused(tmp_path: Path, capsys) -> None:
    acks = tmp_path / "acks.jsonl"
    arrivals = tmp_path / "arrivals.jsonl"
    acks.write_text("\n".join(json.dumps(r) for r in [
        {"n": 0, "message_id": "<a>", "sha256": "", "code": 250, "reply": "", "queue_id": "Q1", "acked_at": 10.0},
        {"n": 1, "message_id": "<b>", "sha256": "", "code": 250, "reply": "", "queue_id": "Q2", "acked_at": 11.0},
        {"n": 2, "message_id": "<c>", "sha256": "", "code": 452, "reply": "", "queue_id": None},
    ]) + "\n")
    arrivals.write_text("\n".join(json.dumps(a) for a in [
        {"id": "x", "arrived": 10.25, "size": 1, "message_id": "<a>"},
        {"id": "y", "arrived": 12.0, "size": 1, "message_id": "<a>"},  # a duplicate: the first arrival counts
    ]) + "\n")
    mailcount.main(["latency", "--acks", str(acks), "--arrivals", str(arrivals)])
    figures = json.loads(capsys.readouterr().out)
    assert (figures["sent"], figures["acked"], figures["delivered"], figures["missing"]) == (3, 2, 1, 1)
    assert figures["missing_ids"] == ["<b>"] and figures["p50_ms"] == figures["p99_ms"] == 250.0
