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
