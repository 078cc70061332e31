# -*- coding: utf-8 -*-
# Copyright: durable-mx contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Turn Postfix log lines into events, and follow a mail log.

Standard library only: the exporter imports this file from
/usr/local/lib/durable-mx on the nodes, next to postfix_queue.py.

Sources, verified against Postfix 3.7.11 on Debian 12:

* Syslog file lines, with the classic timestamp ("Nov 28 12:00:00") or the
  RFC 3339 one Debian 12's rsyslog writes ("2025-11-28T12:00:00.123456+00:00"):
  ``TIMESTAMP HOST IDENT[PID]: MESSAGE``.
* journald entries as ``journalctl -o json`` prints them: SYSLOG_IDENTIFIER,
  SYSLOG_PID (or _PID), MESSAGE (a string, or a list of byte values when it
  is not valid UTF-8) and __REALTIME_TIMESTAMP (microseconds).

Postfix logs as ``syslog_name/program``; syslog_name may itself hold a
slash (``postfix/submission/smtpd``, ``postfix-bulk/smtp``).  The instance is
the part before the first slash, the program the part after the last one.

Events (LogEvent.kind):

* ``delivery``: one recipient's delivery attempt, ``QUEUEID: to=<...>,
  [orig_to=<...>,] relay=..., [conn_use=N,] delay=..., delays=a/b/c/d,
  dsn=X.Y.Z, status=sent|deferred|bounced (...)``, from any delivery agent.
* ``expired``: ``QUEUEID: from=<...>, status=expired, returned to sender``
  from qmgr (``force-expired`` after ``postsuper -e`` counts too).
* ``connect``: smtpd ``connect from CLIENT``.
* ``reject``: smtpd ``NOQUEUE: reject: STAGE from CLIENT: 550 5.1.1 ...``,
  the same with a queue ID, and ``milter-reject``; reject_warning is not a
  reject.

Anything else gives None.  A line that has the shape of a delivery, expiry
or reject record but whose fields do not parse raises LogParseError, so a
format change shows up as errors instead of silently missing counts.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

DELIVERY_STATUSES = ("sent", "deferred", "bounced")
EVENT_KINDS = ("delivery", "expired", "connect", "reject")
DSN_CLASSES = ("2", "4", "5")
# delays=a/b/c/d (Postfix 2.3+): before the queue manager (including message
# transmission into the queue), in the queue manager, connection setup
# (DNS, HELO, TLS), message transmission.
DELAY_STAGES = ("before_qmgr", "in_qmgr", "conn_setup", "transmission")


class LogParseError(ValueError):
    """A line looks like an event Postfix logs but its fields do not parse."""


@dataclass(frozen=True)
class LogEvent:
    """One thing Postfix did, as far as the exporter cares."""

    kind: str  # one of EVENT_KINDS
    instance: str  # syslog_name up to its first slash: "postfix", "postfix-bulk"
    program: str  # "smtp", "smtpd", "qmgr", "error", ...
    ident: str  # the whole syslog identifier, "postfix/submission/smtpd"
    queue_id: Optional[str] = None
    status: Optional[str] = None  # sent, deferred, bounced, expired
    dsn: Optional[str] = None  # "2.0.0"; for rejects the enhanced code when given
    dsn_class: Optional[str] = None  # "2", "4" or "5"
    relay: Optional[str] = None
    delay: Optional[float] = None  # total seconds since arrival
    delays: Optional[Tuple[float, float, float, float]] = None  # see DELAY_STAGES
    client: Optional[str] = None  # "host[addr]" of connects and rejects
    stage: Optional[str] = None  # reject stage: CONNECT, HELO, MAIL, RCPT, DATA, END-OF-MESSAGE ...
    timestamp: Optional[float] = None  # Unix time when the line was logged, if known
    host: Optional[str] = None
    pid: Optional[int] = None


# --------------------------------------------------------------------------
# Messages (the text after "ident[pid]: ")

_QID = r"(?P<qid>[0-9A-Za-z]+)"
# Every delivery agent (smtp, lmtp, local, virtual, pipe, error, discard ...).
_DELIVERY_RE = re.compile(
    _QID + r": to=<(?P<rcpt>.*?)>,(?: orig_to=<.*?>,)? relay=(?P<relay>[^,]*),(?: conn_use=\d+,)?"
    r" delay=(?P<delay>[0-9.]+), delays=(?P<delays>[0-9.]+/[0-9.]+/[0-9.]+/[0-9.]+),"
    r" dsn=(?P<dsn>[245]\.\d{1,3}\.\d{1,3}), status=(?P<status>[A-Za-z-]+)(?: \(.*\))?$")
# Cheap test whether a message claims to be a delivery record at all.
_DELIVERY_SHAPE_RE = re.compile(_QID + r": to=<.*, status=")
_EXPIRED_RE = re.compile(_QID + r": from=<.*>, status=(?:force-)?expired, returned to sender$")
_EXPIRED_SHAPE_RE = re.compile(r"status=(?:force-)?expired\b")
_CONNECT_RE = re.compile(r"connect from (?P<client>\S+)$")
# "NOQUEUE: reject: RCPT from host[addr]: 550 5.1.1 <x@y>: ...", "QUEUEID: reject: ...",
# "QUEUEID: milter-reject: END-OF-MESSAGE from host[addr]: 5.7.1 Command rejected; ..."
_REJECT_RE = re.compile(
    r"(?:NOQUEUE|" + _QID + r"): (?:milter-)?reject: (?P<stage>[A-Z][A-Z-]*) from (?P<client>\S+?\[[^\]]*\](?::\d+)?):"
    r" (?:(?P<code>[245])\d\d(?: |$))?(?P<dsn>[245]\.\d{1,3}\.\d{1,3}\b)?")
_REJECT_SHAPE_RE = re.compile(r"^(?:NOQUEUE|[0-9A-Za-z]+): (?:milter-)?reject: ")


def split_ident(ident: str) -> Optional[Tuple[str, str]]:
    """(instance, program) of a Postfix syslog identifier, or None for other programs."""
    if "/" not in ident:
        return None
    instance, _, _ = ident.partition("/")
    program = ident.rpartition("/")[2]
    if not instance or not program:
        return None
    return instance, program


def _delivery(ident: str, instance: str, program: str, message: str, **meta: Any) -> LogEvent:
    match = _DELIVERY_RE.match(message)
    if not match:
        raise LogParseError("%s: delivery record does not parse: %r" % (ident, message[:200]))
    status = match.group("status")
    parts = match.group("delays").split("/")
    try:
        delays = (float(parts[0]), float(parts[1]), float(parts[2]), float(parts[3]))
        delay = float(match.group("delay"))
    except ValueError:
        raise LogParseError("%s: bad delay=%s delays=%s" % (ident, match.group("delay"), match.group("delays")))
    dsn = match.group("dsn")
    return LogEvent("delivery", instance, program, ident, queue_id=match.group("qid"), status=status,
                    dsn=dsn, dsn_class=dsn[0], relay=match.group("relay"), delay=delay, delays=delays, **meta)


def _reject(ident: str, instance: str, program: str, message: str, **meta: Any) -> LogEvent:
    match = _REJECT_RE.match(message)
    if not match or not (match.group("code") or match.group("dsn")):
        raise LogParseError("%s: reject record does not parse: %r" % (ident, message[:200]))
    dsn = match.group("dsn")
    # The enhanced status code wins: Postfix keeps both consistent, but a
    # milter can only give the enhanced code.
    dsn_class = dsn[0] if dsn else match.group("code")
    return LogEvent("reject", instance, program, ident, queue_id=match.group("qid"), dsn=dsn,
                    dsn_class=dsn_class, client=match.group("client"), stage=match.group("stage"), **meta)


def parse_message(ident: str, message: str, timestamp: Optional[float] = None, host: Optional[str] = None,
                  pid: Optional[int] = None) -> Optional[LogEvent]:
    """The event in one Postfix log message, or None when it is none we count."""
    names = split_ident(ident)
    if names is None:
        return None
    instance, program = names
    meta: Dict[str, Any] = {"timestamp": timestamp, "host": host, "pid": pid}
    if program == "smtpd":
        if message.startswith("connect from "):
            match = _CONNECT_RE.match(message)
            if match:
                return LogEvent("connect", instance, program, ident, client=match.group("client"), **meta)
            return None
        if _REJECT_SHAPE_RE.match(message):
            return _reject(ident, instance, program, message, **meta)
        return None
    if ": to=<" in message and _DELIVERY_SHAPE_RE.match(message):
        event = _delivery(ident, instance, program, message, **meta)
        return event if event.status in DELIVERY_STATUSES else None  # e.g. verify probes: (un)deliverable
    if program == "qmgr" and _EXPIRED_SHAPE_RE.search(message):
        match = _EXPIRED_RE.match(message)
        if not match:
            raise LogParseError("%s: expiry record does not parse: %r" % (ident, message[:200]))
        # An expired message was deferred with 4.x.x until it gave up: the
        # notification returned to the sender carries that temporary status.
        return LogEvent("expired", instance, program, ident, queue_id=match.group("qid"), status="expired",
                        dsn_class="4", **meta)
    return None


# --------------------------------------------------------------------------
# Syslog file lines

_SYSLOG_RE = re.compile(
    r"(?P<ts>[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d(?:\.\d+)?"
    r"|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)"
    r" (?P<host>\S+) (?P<ident>[^\s\[\]:]+)(?:\[(?P<pid>\d+)\])?: (?P<msg>.*)$")
_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}


def parse_timestamp(text: str, now: Optional[float] = None) -> Optional[float]:
    """Unix time of a syslog timestamp; None when it cannot be read.

    The classic form has neither year nor zone: it is taken as local time in
    the current year, or the previous one when that would be more than a day
    in the future (a December line read in January).
    """
    if text[0].isdigit():
        try:
            stamp = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        return stamp.timestamp()  # naive: local time, like the classic form
    now = time.time() if now is None else now
    try:
        month = _MONTHS[text[:3]]
        day = int(text[4:6])
        hms, _, frac = text[7:].partition(".")
        hour, minute, second = (int(x) for x in hms.split(":"))
        year = time.localtime(now).tm_year
        for candidate in (year, year - 1):
            when = datetime.datetime(candidate, month, day, hour, minute, second).timestamp()
            if when <= now + 86400:
                return when + (float("0." + frac) if frac else 0.0)
    except (KeyError, ValueError):
        return None
    return None


def parse_syslog_line(line: str, now: Optional[float] = None) -> Optional[LogEvent]:
    """The event in one mail log line (classic or RFC 3339 timestamp), or None."""
    match = _SYSLOG_RE.match(line.rstrip("\r\n"))
    if not match or "/" not in match.group("ident"):
        return None
    pid = match.group("pid")
    return parse_message(match.group("ident"), match.group("msg"),
                         timestamp=parse_timestamp(match.group("ts"), now), host=match.group("host"),
                         pid=int(pid) if pid else None)


# --------------------------------------------------------------------------
# journald entries


def _journal_text(value: Any) -> Optional[str]:
    """A journal field as text: journalctl prints non-UTF-8 values as byte lists."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(b, int) for b in value):
        return bytes(b & 0xFF for b in value).decode("utf-8", "replace")
    return None


def parse_journal_entry(entry: Dict[str, Any]) -> Optional[LogEvent]:
    """The event in one journal entry (a decoded ``journalctl -o json`` line), or None."""
    ident = _journal_text(entry.get("SYSLOG_IDENTIFIER"))
    if not ident or "/" not in ident:
        return None
    message = _journal_text(entry.get("MESSAGE"))
    if message is None:
        return None
    pid_text = _journal_text(entry.get("SYSLOG_PID") or entry.get("_PID")) or ""
    stamp = _journal_text(entry.get("__REALTIME_TIMESTAMP")) or ""
    return parse_message(ident, message,
                         timestamp=int(stamp) / 1e6 if stamp.isdigit() else None,
                         host=_journal_text(entry.get("_HOSTNAME")),
                         pid=int(pid_text) if pid_text.isdigit() else None)


def parse_journal_line(line: str) -> Optional[LogEvent]:
    """The event in one ``journalctl -o json`` output line, or None.

    Raises LogParseError when the line is not a JSON object.
    """
    try:
        entry = json.loads(line)
    except ValueError as exc:
        raise LogParseError("journal line is not JSON (%s): %r" % (exc, line[:200]))
    if not isinstance(entry, dict):
        raise LogParseError("journal line is not a JSON object: %r" % line[:200])
    return parse_journal_entry(entry)


# --------------------------------------------------------------------------
# Followers


class FileFollower:
    """Follow a log file like ``tail -F``: survives rotation and truncation.

    Starts at the end of the file when it exists at the first poll (history
    is not replayed), at its beginning when it appears later or is replaced
    (rotation: a new inode at the path).  After a rotation the rest of the
    old file is read first.  A truncated file (smaller than our offset) is
    read again from its start.  Lines come out without their newline; a
    partial last line waits for its newline.
    """

    def __init__(self, path: str, poll_interval: float = 0.5, from_end: bool = True) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self._from_end = from_end
        self._file: Optional[Any] = None
        self._ino: Optional[Tuple[int, int]] = None
        self._partial = b""
        self._stop = threading.Event()

    def _open(self, at_end: bool) -> bool:
        try:
            handle = open(self.path, "rb")  # pylint: disable=consider-using-with
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return False
            raise
        st = os.fstat(handle.fileno())
        if at_end:
            handle.seek(0, os.SEEK_END)
        self._file, self._ino, self._partial = handle, (st.st_dev, st.st_ino), b""
        return True

    def _read_lines(self) -> List[str]:
        assert self._file is not None
        data = self._file.read()
        if not data:
            return []
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return [line.decode("utf-8", "replace") for line in lines]

    def poll(self) -> List[str]:
        """Complete lines written since the last poll (never blocks)."""
        if self._file is None:
            first = self._ino is None
            if not self._open(at_end=first and self._from_end):
                self._ino = self._ino or (0, 0)  # a file appearing later is read from its start
                return []
        lines = self._read_lines()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return lines  # rotated away, the new file not there yet: keep the old one open
        if (st.st_dev, st.st_ino) != self._ino:
            lines += self._read_lines()  # what was written before the rotation
            if self._partial:
                lines.append(self._partial.decode("utf-8", "replace"))
            self.close()
            if self._open(at_end=False):
                lines += self._read_lines()
        elif st.st_size < self._file.tell():
            self._file.seek(0)  # truncated (copytruncate): start over
            self._partial = b""
            lines += self._read_lines()
        return lines

    def lines(self) -> Iterator[str]:
        """Every new line, waiting poll_interval between empty polls, until stop()."""
        while not self._stop.is_set():
            batch = self.poll()
            if not batch:
                self._stop.wait(self.poll_interval)
            yield from batch

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None


def journal_command(identifiers: Sequence[str] = (), units: Sequence[str] = (), after_cursor: Optional[str] = None,
                    journalctl: str = "journalctl") -> List[str]:
    """``journalctl -f`` printing new entries as JSON, one per line.

    Without a cursor it starts at the end (-n 0); with one, right after it,
    so a restarted follower neither loses nor repeats entries.
    """
    cmd = [journalctl, "--follow", "--quiet", "--output=json", "--no-pager"]
    cmd += ["--after-cursor=" + after_cursor] if after_cursor else ["--lines=0"]
    for ident in identifiers:
        cmd.append("--identifier=" + ident)
    for unit in units:
        cmd.append("--unit=" + unit)
    return cmd


_CURSOR_RE = re.compile(r'"__CURSOR"\s*:\s*"([^"]+)"')


class JournalFollower:
    """Follow the journal through a ``journalctl -f -o json`` subprocess.

    lines() yields its output lines; when journalctl exits it is started
    again after restart_delay, after the last cursor seen.
    """

    def __init__(self, identifiers: Sequence[str] = (), units: Sequence[str] = (), journalctl: str = "journalctl",
                 restart_delay: float = 5.0) -> None:
        self.identifiers = list(identifiers)
        self.units = list(units)
        self.journalctl = journalctl
        self.restart_delay = restart_delay
        self.cursor: Optional[str] = None
        self.restarts = 0
        self._proc: Optional[subprocess.Popen] = None
        self._stop = threading.Event()

    def command(self) -> List[str]:
        return journal_command(self.identifiers, self.units, self.cursor, self.journalctl)

    def lines(self) -> Iterator[str]:
        """Journal lines (JSON text) until stop()."""
        while not self._stop.is_set():
            self._proc = subprocess.Popen(  # pylint: disable=consider-using-with
                self.command(), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                encoding="utf-8", errors="replace", bufsize=1)
            assert self._proc.stdout is not None
            for line in self._proc.stdout:
                match = _CURSOR_RE.search(line)
                if match:
                    self.cursor = match.group(1)
                yield line.rstrip("\n")
            self._proc.wait()
            self._proc = None
            if not self._stop.is_set():
                self.restarts += 1
                self._stop.wait(self.restart_delay)

    def stop(self) -> None:
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
