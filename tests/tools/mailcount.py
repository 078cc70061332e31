#!/usr/bin/env python3
"""Count mail through a failure: what was sent, acknowledged, stored, lost, corrupted.

Standard library only: the tests copy this file into lab nodes and run it there.

  send          send N numbered messages over SMTP, one JSON line per message to --out
                ({"n", "message_id", "sha256", "code", "reply", "queue_id"})
  check-postfix for every acknowledged message, read it back from the Postfix queue with
                postcat and compare its body hash (--queue-dir: from a copy of a queue
                directory, such as an extracted backup, instead of the live queue)
  check-dir     the same against a directory of received files (the `sink` below)
  sink          a minimal SMTP receiver that stores each message as a file and answers
                "250 ... queued as ID"; with --no-fsync it acknowledges before the data is on
                disk (a deliberately unsafe receiver, to show the checks can fail); --delay makes
                it a slow destination, --log records each arrival (Message-ID, time)
  count         copies per Message-ID of one tag stored in a sink directory (JSON object), to
                count delivered / lost / duplicated by Message-ID
  latency       match the acknowledged messages of send runs with the arrivals a sink logged:
                delivered / missing counts and the delivery latency (250 at the sender to
                arrival at the sink) percentiles
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import secrets
import smtplib
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")
MESSAGE_ID = re.compile(rb"(?im)^Message-ID:[ \t]*(<[^>\r\n]*>)")
BODY_LINE = 76  # characters of payload per body line


def body_lines(n: int, size: int) -> list[str]:
    """A body of about `size` bytes: hex lines, so nothing needs dot-stuffing or encoding."""
    lines = [f"message {n}"]
    total = len(lines[0]) + 1
    while total < size:
        lines.append(secrets.token_hex(BODY_LINE // 2))
        total += BODY_LINE + 1
    return lines


def body_hash(lines: list[str]) -> str:
    """Hash of the body as postcat -b prints it: each line followed by a newline."""
    return hashlib.sha256("".join(line + "\n" for line in lines).encode()).hexdigest()


def build_message(tag: str, n: int, sender: str, rcpt: str, size: int) -> tuple[str, str, bytes]:
    message_id = f"<{tag}-{n}@mailcount.test>"
    lines = body_lines(n, size)
    headers = [
        f"From: {sender}",
        f"To: {rcpt}",
        f"Subject: {tag} {n}",
        f"Message-ID: {message_id}",
        "Date: " + time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime()),
    ]
    data = "\r\n".join(headers + [""] + lines).encode() + b"\r\n"
    return message_id, body_hash(lines), data


class Results:
    """Thread-safe JSON-lines writer; every line is flushed so a crash loses nothing seen."""

    def __init__(self, path: Path, append: bool = False) -> None:
        self._fh = path.open("a" if append else "w")
        self._lock = threading.Lock()

    def write(self, record: dict) -> None:
        with self._lock:
            self._fh.write(json.dumps(record) + "\n")
            self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def send_worker(args: argparse.Namespace, numbers: Iterator[int], lock: threading.Lock, out: Results,
                started: float = 0.0) -> None:
    client: smtplib.SMTP | None = None
    while True:
        with lock:
            n = next(numbers, None)
        if n is None:
            break
        if args.interval:
            # A fixed schedule (message k at start + k x interval), whatever each one took.
            wait = started + (n - args.start) * args.interval - time.time()
            if wait > 0:
                time.sleep(wait)
        message_id, digest, data = build_message(args.tag, n, args.sender, args.rcpt, args.size)
        record = {"n": n, "message_id": message_id, "sha256": digest, "code": None, "reply": "", "queue_id": None}
        began = time.monotonic()
        try:
            if client is None:
                client = smtplib.SMTP(args.host, args.port, timeout=args.timeout)
                client.ehlo(args.helo)
            code, reply = client.mail(args.sender)
            if code == 250:
                code, reply = client.rcpt(args.rcpt)
            if code == 250:
                code, reply = client.data(data)
            else:
                client.rset()
            record["code"], record["reply"] = code, reply.decode(errors="replace")
            record["acked_at"] = time.time()  # when the reply arrived (wall clock, as the sink logs)
            match = QUEUED_AS.search(record["reply"])
            if code == 250 and match:
                record["queue_id"] = match.group(1)
        except (smtplib.SMTPException, OSError) as exc:
            # A failure without a reply code is not an acknowledgement: record it and reconnect.
            code = getattr(exc, "smtp_code", None)
            record["code"] = code if isinstance(code, int) else -1
            record["reply"] = f"{type(exc).__name__}: {exc}"
            if client is not None:
                try:
                    client.close()
                except OSError:
                    pass
            client = None
            time.sleep(args.reconnect_delay)
        # How long the client waited for this message's outcome (connect included): a hung session shows here.
        record["seconds"] = round(time.monotonic() - began, 3)
        out.write(record)
        if args.delay:
            time.sleep(args.delay)
    if client is not None:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            pass


def load(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def summarize_send(records: list[dict]) -> dict:
    codes = [r["code"] for r in records]
    return {
        "sent": len(records),
        "acked": sum(1 for r in records if r["code"] == 250 and r["queue_id"]),
        "tempfail": sum(1 for c in codes if isinstance(c, int) and 400 <= c < 500),
        "permfail": sum(1 for c in codes if isinstance(c, int) and 500 <= c < 600),
        "errors": sum(1 for c in codes if c == -1),
    }


def cmd_send(args: argparse.Namespace) -> int:
    out = Results(Path(args.out))
    numbers = iter(range(args.start, args.start + args.count))
    lock = threading.Lock()
    started = time.monotonic()
    threads = [
        threading.Thread(target=send_worker, args=(args, numbers, lock, out, time.time()), daemon=True)
        for _ in range(args.parallel)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.close()
    summary = summarize_send(load(args.out))
    summary["seconds"] = round(time.monotonic() - started, 3)
    print(json.dumps(summary))
    return 0


def acked(records: list[dict]) -> list[dict]:
    return [r for r in records if r["code"] == 250 and r["queue_id"]]


QUEUE_NAMES = ("maildrop", "incoming", "active", "deferred", "hold", "corrupt")


def queue_files(queue_dir: str) -> dict[str, Path]:
    """Queue ID -> file, for every message file of a (copy of a) queue directory."""
    found = {}
    for queue in QUEUE_NAMES:
        for path in Path(queue_dir, queue).rglob("*"):
            if path.is_file():
                found[path.name] = path
    return found


def postcat_body(queue_id: str, config_dir: str | None, path: Path | None = None) -> str | None:
    command = ["postcat", "-bq", queue_id] if path is None else ["postcat", "-b", str(path)]
    if config_dir:
        command[1:1] = ["-c", config_dir]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not result.stdout:
        return None
    # postcat -b starts with the empty line that separates headers from the body.
    return result.stdout[1:] if result.stdout.startswith("\n") else result.stdout


def file_body(path: Path) -> str | None:
    """Body of a stored message file (after the first empty line), CRLF normalised."""
    try:
        text = path.read_bytes().decode(errors="replace").replace("\r\n", "\n")
    except OSError:
        return None
    head, sep, body = text.partition("\n\n")
    return body if sep else None


def verify(records: list[dict], read_body) -> dict:
    ok = lost = corrupt = 0
    missing: list[str] = []
    for record in acked(records):
        body = read_body(record["queue_id"])
        if body is None:
            lost += 1
            missing.append(record["queue_id"])
        elif hashlib.sha256(body.encode()).hexdigest() == record["sha256"]:
            ok += 1
        else:
            corrupt += 1
            missing.append(record["queue_id"])
    summary = summarize_send(records)
    summary.update({"present": ok, "lost": lost, "corrupt": corrupt, "missing_ids": missing[:20]})
    return summary


def cmd_check_postfix(args: argparse.Namespace) -> int:
    if args.queue_dir:
        files = queue_files(args.queue_dir)
        summary = verify(load(args.acks), lambda qid: postcat_body(qid, args.config_dir, files[qid]) if qid in files else None)
    else:
        summary = verify(load(args.acks), lambda qid: postcat_body(qid, args.config_dir))
    print(json.dumps(summary))
    return 0


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile (the smallest value with at least pct % of values at or below it)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100.0 * len(ordered)) - 1)]


def latency(records: list[dict], arrivals: list[dict]) -> dict:
    """Acknowledged messages matched by Message-ID with the sink's arrivals (first arrival counts)."""
    arrived: dict[str, float] = {}
    for entry in arrivals:
        if entry.get("message_id") and entry["message_id"] not in arrived:
            arrived[entry["message_id"]] = entry["arrived"]
    ok = [r for r in records if r["code"] == 250]
    seconds = [arrived[r["message_id"]] - r["acked_at"] for r in ok if r["message_id"] in arrived]
    missing = [r["message_id"] for r in ok if r["message_id"] not in arrived]

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000.0, 1)

    summary = summarize_send(records)
    summary.update({
        "acked": len(ok),
        "delivered": len(seconds),
        "missing": len(missing),
        "missing_ids": missing[:20],
        "p50_ms": ms(percentile(seconds, 50)),
        "p90_ms": ms(percentile(seconds, 90)),
        "p99_ms": ms(percentile(seconds, 99)),
        "max_ms": ms(max(seconds) if seconds else None),
        "mean_ms": ms(sum(seconds) / len(seconds) if seconds else None),
    })
    return summary


def cmd_latency(args: argparse.Namespace) -> int:
    records = [r for path in args.acks for r in load(path)]
    arrivals = [a for path in args.arrivals for a in load(path)]
    print(json.dumps(latency(records, arrivals)))
    return 0


def cmd_check_dir(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    summary = verify(load(args.acks), lambda qid: file_body(directory / f"{qid}.eml"))
    print(json.dumps(summary))
    return 0


def stored_message_ids(directory: Path, tag: str) -> dict[str, int]:
    """Copies of each Message-ID <TAG-N@...> among the .eml files a sink stored (headers only)."""
    counts: dict[str, int] = {}
    prefix = f"<{tag}-"
    for entry in os.scandir(directory):
        if not entry.name.endswith(".eml"):
            continue
        with open(entry.path, "rb") as fh:
            for line in fh:
                if line in (b"\r\n", b"\n"):
                    break
                match = MESSAGE_ID.match(line)
                if match:
                    message_id = match.group(1).decode(errors="replace")
                    if message_id.startswith(prefix):
                        counts[message_id] = counts.get(message_id, 0) + 1
                    break
    return counts


def cmd_count(args: argparse.Namespace) -> int:
    print(json.dumps(stored_message_ids(Path(args.dir), args.tag)))
    return 0


class SinkHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP for smtplib and Postfix's smtp client: HELO/EHLO, MAIL, RCPT, DATA, RSET."""

    server: "SinkServer"

    def reply(self, line: str) -> None:
        self.wfile.write((line + "\r\n").encode())
        self.wfile.flush()

    def handle(self) -> None:
        self.reply(f"220 {socket.gethostname()} mailcount sink")
        while True:
            raw = self.rfile.readline()
            if not raw:
                return
            verb = raw.decode(errors="replace").strip().split(" ", 1)[0].upper()
            if verb == "EHLO":
                self.reply("250-mailcount")
                self.reply("250 8BITMIME")
            elif verb in ("HELO", "MAIL", "RCPT", "RSET", "NOOP"):
                self.reply("250 2.0.0 Ok")
            elif verb == "DATA":
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                queue_id = self.store(self.read_data())
                if self.server.delay:
                    time.sleep(self.server.delay)  # a slow destination: stored, but late to say so
                self.reply(f"250 2.0.0 Ok: queued as {queue_id}")
            elif verb == "QUIT":
                self.reply("221 2.0.0 Bye")
                return
            else:
                self.reply("502 5.5.2 Command not recognised")

    def read_data(self) -> bytes:
        chunks = []
        while True:
            line = self.rfile.readline()
            if not line or line in (b".\r\n", b".\n"):
                break
            chunks.append(line[1:] if line.startswith(b"..") else line)
        return b"".join(chunks)

    def store(self, data: bytes) -> str:
        arrived = time.time()
        queue_id = secrets.token_hex(8)
        final = self.server.directory / f"{queue_id}.eml"
        temp = final.with_suffix(".tmp")
        with temp.open("wb") as fh:
            fh.write(data)
            if self.server.fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.rename(temp, final)
        if self.server.fsync:
            dir_fd = os.open(self.server.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        if self.server.log is not None:
            match = MESSAGE_ID.search(data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0])
            self.server.log.write({"id": queue_id, "arrived": arrived, "size": len(data),
                                   "message_id": match.group(1).decode(errors="replace") if match else None})
        return queue_id


class SinkServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    request_queue_size = 128  # a Postfix client opens up to its destination concurrency at once
    daemon_threads = True

    def __init__(self, address: tuple[str, int], directory: Path, fsync: bool, delay: float = 0.0,
                 log: Results | None = None) -> None:
        super().__init__(address, SinkHandler)
        self.directory = directory
        self.fsync = fsync
        self.delay = delay
        self.log = log  # one JSON line per arrival: id, arrived (time.time() when DATA ended), size, message_id


def cmd_sink(args: argparse.Namespace) -> int:
    host, _, port = args.listen.rpartition(":")
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    log = Results(Path(args.log), append=True) if args.log else None
    with SinkServer((host or "0.0.0.0", int(port)), directory, fsync=not args.no_fsync, delay=args.delay,
                    log=log) as server:
        server.serve_forever()
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("send", help="send numbered messages and record every reply")
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, default=25)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--start", type=int, default=0, help="first message number")
    s.add_argument("--parallel", type=int, default=1, help="concurrent SMTP connections")
    s.add_argument("--size", type=int, default=2048, help="approximate body size in bytes")
    s.add_argument("--sender", default="sender@mailcount.test")
    s.add_argument("--rcpt", required=True)
    s.add_argument("--helo", default="mailcount.test")
    s.add_argument("--tag", default="mc", help="Message-ID prefix, to tell runs apart")
    s.add_argument("--delay", type=float, default=0.0, help="pause after each message (s)")
    s.add_argument("--interval", type=float, default=0.0,
                   help="send message k at start + k x interval (s), a fixed rate whatever each one takes")
    s.add_argument("--timeout", type=float, default=30.0)
    s.add_argument("--reconnect-delay", type=float, default=0.2)
    s.add_argument("--out", required=True, help="JSON-lines file of results")
    s.set_defaults(func=cmd_send)

    c = sub.add_parser("check-postfix", help="find every acknowledged message in the Postfix queue")
    c.add_argument("--acks", required=True)
    c.add_argument("--config-dir", default=None)
    c.add_argument("--queue-dir", default=None, help="read the messages from this copy of a queue directory")
    c.set_defaults(func=cmd_check_postfix)

    d = sub.add_parser("check-dir", help="find every acknowledged message in a sink directory")
    d.add_argument("--acks", required=True)
    d.add_argument("--dir", required=True)
    d.set_defaults(func=cmd_check_dir)

    k = sub.add_parser("sink", help="minimal SMTP receiver storing one file per message")
    k.add_argument("--listen", default="0.0.0.0:2525")
    k.add_argument("--dir", required=True)
    k.add_argument("--no-fsync", action="store_true", help="acknowledge before the data is on disk (unsafe)")
    k.add_argument("--delay", type=float, default=0.0, help="seconds to wait before each 250 (a slow destination)")
    k.add_argument("--log", help="append one JSON line per arrival (id, arrived, size, message_id) to this file")
    k.set_defaults(func=cmd_sink)

    n = sub.add_parser("count", help="copies per Message-ID of one tag in a sink directory")
    n.add_argument("--dir", required=True)
    n.add_argument("--tag", required=True, help="Message-ID prefix of the send run")
    n.set_defaults(func=cmd_count)

    t = sub.add_parser("latency", help="delivered / missing and latency percentiles: send records vs sink arrivals")
    t.add_argument("--acks", action="append", required=True, help="JSON-lines file of a send run (repeatable)")
    t.add_argument("--arrivals", action="append", required=True, help="arrival log of a sink (repeatable)")
    t.set_defaults(func=cmd_latency)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
