# -*- coding: utf-8 -*-
# Copyright: durable-mx contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read and check Postfix mail queues without Postfix's help.

Standard library only: the same file is imported by Ansible modules (through
Ansiballz, as ansible.module_utils.postfix_queue), by the pre-start integrity
command and by the Prometheus exporter, which run as plain Python on nodes.

Formats, verified against Postfix 3.7.11 queue files and Postfix source
(src/global/rec_type.h, record.c, mail_queue.[ch], mail_open_ok.c,
qmgr_active.c):

* A queue file is a sequence of records: one type byte, the data length as
  7-bit little-endian groups (high bit set = another length byte follows),
  then the data.  The envelope (C, T, A, S, O, R, D, p ...) ends at M; the
  content (N, L, w) at X; the extracted segment (A, R, O, ...) at E.  A 'p'
  record with a non-zero offset points at records appended after E (cleanup
  and milter edits), which point back again.
* C holds fixed-width numbers: content size (what postqueue reports as
  message_size), data offset, recipient count, qmgr flags, content length
  and, since Postfix 3.0, SMTPUTF8 flags.  The extracted segment starts at
  data_offset + content size.  Files from postdrop (maildrop) have no C
  record; postqueue reports their file size.
* T is "seconds microseconds" of arrival.
* Deferred messages keep a text log in defer/ (hashed like deferred/):
  entries of name=value lines (recipient=, status=, reason= ...) separated
  by blank lines.
* Hashed queues (hash_queue_names) live in dir_forest(key, hash_queue_depth)
  subdirectories: one directory level per character of the key.  The key is
  the queue ID itself for short IDs; for long IDs (enable_long_queue_ids) it
  is the 4 base-52 microsecond characters before the last 'z', re-encoded
  as 5 upper-case hex digits.
* A complete queue file has owner permissions rwx (MAIL_QUEUE_STAT_READY);
  files still being written (or left half-written by a crash) do not.
  Maildrop files are 0744, owned by the submitting user, group setgid_group.
"""

from __future__ import annotations

import array
import bisect
import contextlib
import ctypes
import fcntl
import functools
import gc
import hashlib
import json
import marshal
import os
import re
import signal
import stat
import struct
import subprocess
import threading
import time
from collections import Counter
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

MESSAGE_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold", "corrupt")
DEFAULT_HASH_QUEUE_NAMES = ("deferred", "defer")
DEFAULT_HASH_QUEUE_DEPTH = 1

# qshape's age columns: each key counts messages younger than that many
# minutes (and not younger than the previous key); "1280+" is the rest.
AGE_BUCKETS_MINUTES = (5, 10, 20, 40, 80, 160, 320, 640, 1280)
AGE_BUCKET_KEYS = tuple(str(b) for b in AGE_BUCKETS_MINUTES) + ("1280+",)

REASON_CLASSES = ("dns", "connect", "tls", "4xx", "5xx", "other")

# Every record type Postfix 3.x writes into a queue file (rec_type.h).
KNOWN_RECORD_TYPES = frozenset(b"CTcFILSDRO/WAK>fdMNwXrePpV<ionmE")
REC_SIZE, REC_TIME, REC_FROM = ord("C"), ord("T"), ord("S")
REC_RCPT, REC_MESG, REC_XTRA = ord("R"), ord("M"), ord("X")
REC_END, REC_PTR, REC_ATTR = ord("E"), ord("p"), ord("A")

# What read_envelope() does with each record type: one bytes lookup both
# rejects unknown types and dispatches, instead of a set test plus a chain of
# comparisons per record (the envelope loop runs ~15 times per message).
_ENV_UNKNOWN, _ENV_SKIP, _ENV_RCPT, _ENV_MESG, _ENV_TIME = 0, 1, 2, 3, 4
_ENV_FROM, _ENV_SIZE, _ENV_ATTR, _ENV_PTR, _ENV_END = 5, 6, 7, 8, 9


def _envelope_actions() -> bytes:
    table = bytearray(256)
    for rtype in KNOWN_RECORD_TYPES:
        table[rtype] = _ENV_SKIP
    for rtype, action in ((REC_RCPT, _ENV_RCPT), (REC_MESG, _ENV_MESG), (REC_TIME, _ENV_TIME),
                          (REC_FROM, _ENV_FROM), (REC_SIZE, _ENV_SIZE), (REC_ATTR, _ENV_ATTR),
                          (REC_PTR, _ENV_PTR), (REC_END, _ENV_END)):
        table[rtype] = action
    return bytes(table)


_ENVELOPE_ACTIONS = _envelope_actions()

# Reading must not dirty inodes (atime) of 100k files; only root may ask.
_READ_FLAGS = os.O_RDONLY | (getattr(os, "O_NOATIME", 0) if os.geteuid() == 0 else 0)
HEAD_BYTES = 4096  # the envelope of almost every message fits in one read
MAX_RECORD_LEN = 1 << 30

# Base-52 alphabet of long queue IDs (safe_ultostr.c: digits, then upper and
# lower case consonants), verified against real hashed queue paths.
_LONG_ID_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz"
_LONG_ID_VALUE = {c: i for i, c in enumerate(_LONG_ID_ALPHABET)}
_QUEUE_ID_RE = re.compile(r"^[0-9A-Za-z]+$")
_TEMP_NAME_RE = re.compile(r"^\d+\.\d+$")  # mail_queue_enter(): "usec.pid"


class QueueFileError(ValueError):
    """A queue file does not have the structure Postfix writes."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__("%s: %s" % (kind, detail))
        self.kind = kind
        self.detail = detail


# --------------------------------------------------------------------------
# Records


def parse_record(buf: bytes, pos: int) -> Tuple[int, int, int]:
    """Decode the record at buf[pos:]; return (type, data start, data end).

    Raises IndexError when buf ends inside the record header, so a caller
    holding only the head of a file can read more and retry.
    """
    rtype = buf[pos]
    pos += 1
    length = 0
    shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift >= 32:
            raise QueueFileError("bad-record", "too many length bytes in record %r" % chr(rtype))
    return rtype, pos, pos + length


class RecordReader:
    """Reads records from an open file descriptor, fetching bytes on demand."""

    def __init__(self, fd: int, head: bytes) -> None:
        self.fd = fd
        self.buf = head
        self.base = 0  # file offset of buf[0]
        self.eof = 0 < len(head) < HEAD_BYTES  # an empty head means "nothing read yet"

    def _fill(self, offset: int, need: int) -> None:
        """Make buf cover file bytes [offset, offset + need), or up to EOF."""
        if self.base <= offset and (offset + need <= self.base + len(self.buf) or self.eof):
            return
        size = max(need, HEAD_BYTES)
        self.buf = os.pread(self.fd, size, offset)
        self.base = offset
        self.eof = len(self.buf) < size

    def record(self, offset: int) -> Tuple[int, bytes, int]:
        """Return (type, data, offset of the next record) for the record at offset."""
        self._fill(offset, 16)
        rel = offset - self.base
        if rel >= len(self.buf):
            raise QueueFileError("truncated", "file ends at offset %d before an END record" % offset)
        try:
            rtype, start, end = parse_record(self.buf, rel)
        except IndexError:
            raise QueueFileError("truncated", "file ends inside a record header at offset %d" % offset)
        if end - start > MAX_RECORD_LEN:
            raise QueueFileError("bad-record", "record %r at offset %d claims %d bytes" % (chr(rtype), offset, end - start))
        if end > len(self.buf):
            self._fill(offset, end - rel)
            rel = offset - self.base
            rtype, start, end = parse_record(self.buf, rel)
            if end > len(self.buf):
                raise QueueFileError("truncated", "record %r at offset %d is cut short" % (chr(rtype), offset))
        return rtype, self.buf[start:end], self.base + end


def _pointer_target(data: bytes) -> int:
    try:
        return int(data.strip() or b"0")
    except ValueError:
        raise QueueFileError("bad-record", "pointer record holds %r" % data[:20])


def read_envelope(fd: int, head: Optional[bytes] = None, file_size: Optional[int] = None) -> Dict[str, Any]:
    """Read the envelope of an open queue file (records up to M).

    Returns arrival_time, create_time, message_size, sender, recipients
    (pending R records only: D records are done), data_offset and the offset
    of the extracted segment (both None for maildrop files, which have no C
    record).  This is the hot path of a queue walk, hence one flat loop.
    """
    buf = os.pread(fd, HEAD_BYTES, 0) if head is None else head
    size = len(buf)
    base = 0  # file offset of buf[0]
    pos = 0
    recipients: List[str] = []
    info: Dict[str, Any] = {
        "arrival_time": None, "create_time": None, "message_size": None,
        "sender": None, "recipients": recipients, "xtra_offset": None, "data_offset": None,
    }
    actions = _ENVELOPE_ACTIONS
    while True:
        try:
            rtype = buf[pos]
            length = buf[pos + 1]
            if length < 0x80:
                start = pos + 2
                end = start + length
            else:
                rtype, start, end = parse_record(buf, pos)
        except IndexError:
            end = size + 1  # the header itself is cut off
        if end > size:  # the record runs past what we have read: read from its start
            offset = base + pos
            nxt = RecordReader(fd, b"").record(offset)[2]  # raises if the file is cut short
            buf, base, pos = os.pread(fd, max(HEAD_BYTES, nxt - offset), offset), offset, 0
            size = len(buf)
            continue
        action = actions[rtype]
        if action == _ENV_SKIP:
            pos = end
            continue
        if action == _ENV_UNKNOWN:
            raise QueueFileError("unknown-record", "record type %r at offset %d" % (chr(rtype), base + pos))
        pos = end
        if action == _ENV_RCPT:
            recipients.append(buf[start:end].decode("utf-8", "replace"))
        elif action == _ENV_ATTR:
            if buf.startswith(b"create_time=", start):
                info["create_time"] = int(buf[start + 12:end])
        elif action == _ENV_MESG:
            break
        elif action == _ENV_TIME:
            info["arrival_time"] = int(buf[start:end].split(None, 1)[0])
        elif action == _ENV_FROM:
            info["sender"] = buf[start:end].decode("utf-8", "replace")
        elif action == _ENV_SIZE:
            fields = buf[start:end].split()
            content, data_offset = int(fields[0]), int(fields[1])
            info["message_size"] = content
            info["data_offset"] = data_offset
            info["xtra_offset"] = data_offset + content
        elif action == _ENV_PTR:
            target = _pointer_target(buf[start:end])
            if target:
                if base <= target < base + size:
                    pos = target - base
                else:
                    buf, base, pos = os.pread(fd, HEAD_BYTES, target), target, 0
                    size = len(buf)
        else:  # _ENV_END
            raise QueueFileError("bad-record", "END record inside the envelope at offset %d" % (base + start))
    if info["message_size"] is None and file_size is not None:
        info["message_size"] = file_size  # as postqueue does for maildrop files
    if info["arrival_time"] is None:
        raise QueueFileError("bad-record", "no arrival time (T) record in the envelope")
    return info


def check_structure(fd: int, file_size: int, head: Optional[bytes] = None) -> Dict[str, Any]:
    """Validate a whole queue file the way qmgr reads it; return the envelope.

    Reads the envelope, jumps over the message content (as qmgr does, using
    the C record) and walks the extracted segment until the END record.
    Files without a C record (maildrop) are walked record by record.
    Raises QueueFileError(kind) with kind truncated, unknown-record or
    bad-record.
    """
    if head is None:
        head = os.pread(fd, HEAD_BYTES, 0)
    env = read_envelope(fd, head, file_size)
    reader = RecordReader(fd, head)
    if env["xtra_offset"] is not None:
        if env["xtra_offset"] >= file_size:
            raise QueueFileError("truncated", "content should end at offset %d but the file has %d bytes" % (env["xtra_offset"], file_size))
        offset = env["xtra_offset"]
        rtype, _data, _nxt = reader.record(offset)
        if rtype != REC_XTRA:
            raise QueueFileError("bad-record", "expected X record at offset %d, found %r" % (offset, chr(rtype)))
    else:
        offset = 0
    while True:
        rtype, _data, nxt = reader.record(offset)
        if rtype not in KNOWN_RECORD_TYPES:
            raise QueueFileError("unknown-record", "record type %r at offset %d" % (chr(rtype), offset))
        if rtype == REC_END:
            return env
        offset = nxt


# --------------------------------------------------------------------------
# Queue IDs and hashed directories


def hash_key(queue_id: str) -> str:
    """The string whose leading characters name a queue file's hash directories."""
    zpos = queue_id.rfind("z")
    if zpos >= 10:  # MQID_LG_TIME_PAD: a long queue ID
        usec = 0
        for char in queue_id[zpos - 4:zpos]:
            usec = usec * 52 + _LONG_ID_VALUE[char]
        return "%05X" % usec
    return queue_id


def hash_dirs(queue_id: str, depth: int) -> List[str]:
    """Subdirectory names dir_forest() gives queue_id at the given depth."""
    key = hash_key(queue_id)
    return [key[i] if i < len(key) else "_" for i in range(depth)]


def is_queue_id(name: str) -> bool:
    return bool(_QUEUE_ID_RE.match(name))


def postsuper_safe_id(name: str) -> bool:
    """A queue ID postsuper cannot mistake for its "ALL" wildcard."""
    return is_queue_id(name) and name.upper() != "ALL"


# --------------------------------------------------------------------------
# Configuration


def postconf(config_dir: Optional[str], names: Iterable[str], runner: Callable[..., Any] = subprocess.run,
             expand: bool = False) -> Dict[str, str]:
    """Values of main.cf parameters for one instance, via `postconf -h` (`-xh`: $names expanded)."""
    names = list(names)
    cmd = ["postconf"] + (["-c", config_dir] if config_dir else []) + ["-xh" if expand else "-h"] + names
    proc = runner(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(cmd), proc.stderr.strip()))
    values = proc.stdout.splitlines()
    if len(values) != len(names):
        raise RuntimeError("%s returned %d lines for %d names" % (" ".join(cmd), len(values), len(names)))
    return dict(zip(names, values))


def split_list(value: str) -> List[str]:
    return [v for v in re.split(r"[\s,]+", value) if v]


def instance_settings(config_dir: Optional[str], runner: Callable[..., Any] = subprocess.run) -> Dict[str, Any]:
    """The queue layout and ownership of one Postfix instance."""
    vals = postconf(config_dir, ["queue_directory", "hash_queue_names", "hash_queue_depth", "mail_owner", "setgid_group"], runner)
    return {
        "queue_directory": vals["queue_directory"],
        "hash_queue_names": split_list(vals["hash_queue_names"]),
        "hash_queue_depth": int(vals["hash_queue_depth"]),
        "mail_owner": vals["mail_owner"],
        "setgid_group": vals["setgid_group"],
    }


def list_instances(runner: Callable[..., Any] = subprocess.run) -> List[Dict[str, str]]:
    """Every Postfix instance of the node: the primary, then those its multi_instance_directories lists.

    name is the instance's syslog_name (`postfix`, `postfix-bulk`), the label the exporter gives
    it; group its multi_instance_group (empty for the primary).
    """
    keys = ["syslog_name", "config_directory", "queue_directory", "multi_instance_group"]
    primary = postconf(None, keys + ["multi_instance_directories"], runner, expand=True)
    found = [primary] + [postconf(d, keys, runner, expand=True) for d in split_list(primary["multi_instance_directories"])]
    return [{"name": v["syslog_name"], "config_dir": v["config_directory"], "queue_directory": v["queue_directory"],
             "group": v["multi_instance_group"]} for v in found]


# --------------------------------------------------------------------------
# postqueue -j


def parse_postqueue_json(text: str) -> List[Dict[str, Any]]:
    """Parse `postqueue -j` output (one JSON object per line)."""
    messages = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise ValueError("postqueue -j line %d is not JSON (%s): %r" % (lineno, exc, line[:80]))
        messages.append({
            "queue_name": obj["queue_name"],
            "queue_id": obj["queue_id"],
            "arrival_time": int(obj["arrival_time"]),
            "message_size": int(obj["message_size"]),
            # postqueue shows the null sender as MAILER-DAEMON; queue files hold "".
            "sender": "" if obj.get("sender") == "MAILER-DAEMON" else obj.get("sender", ""),
            "recipients": [r["address"] for r in obj.get("recipients", [])],
            "reasons": {r["address"]: r["delay_reason"] for r in obj.get("recipients", []) if "delay_reason" in r},
            "forced_expire": bool(obj.get("forced_expire", False)),
        })
    return messages


# --------------------------------------------------------------------------
# Defer logs


# Lines "recipient=...", "status=...", "action=...", "reason=..."; matched
# from their leading "\n" (parse_defer_log prepends one for the first line)
# rather than with "^" and re.M: a literal first character lets re skip
# ahead to newlines instead of trying every position, twice as fast.
_DEFER_LOG_FIELD_TEXT_RE = re.compile(r"\n(recipient|status|action|reason)=(.*)")
DEFER_LOG_LIMIT = 1 << 20  # bytes of a defer log we read; the rest is ignored


def parse_defer_log(data: bytes) -> Dict[str, Dict[str, str]]:
    """Map recipient -> {status, action, reason} from a defer/ logfile.

    Entries are name=value lines, each starting with recipient=; the last
    entry for a recipient wins.
    """
    result: Dict[str, Dict[str, str]] = {}
    entry: Dict[str, str] = {}
    # One decode of the whole log instead of one per field: "\n" always ends
    # an invalid UTF-8 sequence, so the values come out the same.
    for key, value in _DEFER_LOG_FIELD_TEXT_RE.findall("\n" + data.decode("utf-8", "replace")):
        if key == "recipient":
            entry = {}
            result[value] = entry
        else:
            entry[key] = value
    return result


# --------------------------------------------------------------------------
# Deferral reason classes

_TLS_RE = re.compile(r"\b(?:STARTTLS|TLS|SSL)\b|certificate|handshake", re.I)
_REPLY_RE = re.compile(r"(?:said|refused to talk to me):\s*([45])\d\d\b")
_DNS_RE = re.compile(r"Host or domain name not found|Name service error|host not found|"
                     r"\bDNS\b|MX lookup|lookup (?:error|failure)|NXDOMAIN|SERVFAIL|no MX host", re.I)
_CONNECT_RE = re.compile(r"connect to |connection (?:timed out|refused|reset)|timed out|"
                         r"unreachable|no route to host|lost connection|network is down", re.I)


@functools.lru_cache(maxsize=4096)  # a big queue repeats a handful of reasons
def classify_reason(reason: Optional[str], status: Optional[str] = None) -> str:
    """Class of a deferral reason: dns, connect, tls, 4xx, 5xx or other.

    TLS first (a TLS failure often quotes a 4xx reply), then a quoted remote
    reply, then DNS, then connection failures; the enhanced status code
    (X.4.1/X.4.2 network, X.4.3/X.4.4 routing) is the fallback.
    """
    text = reason or ""
    if _TLS_RE.search(text):
        return "tls"
    reply = _REPLY_RE.search(text)
    if reply:
        return reply.group(1) + "xx"
    if _DNS_RE.search(text):
        return "dns"
    if _CONNECT_RE.search(text):
        return "connect"
    detail = (status or "").split(".")
    if len(detail) == 3 and detail[1] == "4":
        if detail[2] in ("1", "2"):
            return "connect"
        if detail[2] in ("3", "4"):
            return "dns"
    return "other"


# --------------------------------------------------------------------------
# Walking the queue


def _walk_files(top: str) -> Iterator[os.DirEntry]:
    """Every non-directory entry under top, at any hash depth."""
    try:
        it = os.scandir(top)
    except FileNotFoundError:
        return
    with it:
        dirs = []
        for entry in it:
            if entry.is_dir(follow_symlinks=False):
                dirs.append(entry.path)
            else:
                yield entry
    for path in dirs:
        yield from _walk_files(path)


class EnvelopeCache:
    """Messages read from the queue, keyed by queue file path, reused while unchanged.

    A message is reused while its queue file and its defer log keep the
    verified_key() (inode, ctime, size) they had when it was read: Postfix
    changes a queue file in place (done marks, retry-time utime) and rewrites
    defer logs, and every such change sets ctime.  Kept in memory by the
    exporter; the facts module keeps it in a file between runs (load, save).
    """

    _FORMAT = 1

    def __init__(self) -> None:
        self._entries: Dict[str, Tuple[Any, Dict[str, Any]]] = {}
        self._seen: set = set()
        self.changed = False

    def get(self, path: str, key: Any) -> Optional[Dict[str, Any]]:
        self._seen.add(path)
        hit = self._entries.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        return None

    def put(self, path: str, key: Any, msg: Dict[str, Any]) -> None:
        self._entries[path] = (key, msg)
        self.changed = True

    def prune(self) -> None:
        """Forget files not seen since the last prune (call after each walk)."""
        if len(self._seen) != len(self._entries):
            self._entries = {p: v for p, v in self._entries.items() if p in self._seen}
            self.changed = True
        self._seen = set()

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def load(cls, path: str) -> "EnvelopeCache":
        """The cache saved at path; an empty one when missing or unreadable."""
        cache = cls()
        try:
            with open(path, "rb") as fh, _gc_paused():  # a container per message: see _gc_paused
                version, entries = marshal.loads(fh.read())  # load(fh) reads object by object: 20x slower
            if version == cls._FORMAT and isinstance(entries, dict):
                cache._entries = entries
        except (OSError, EOFError, ValueError, TypeError):
            pass
        return cache

    def save(self, path: str) -> None:
        """Write atomically (private file, rename over the old one)."""
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        tmp = "%s.%d.tmp" % (path, os.getpid())
        with open(tmp, "wb", opener=lambda p, f: os.open(p, f, 0o600)) as fh:
            marshal.dump((self._FORMAT, self._entries), fh)
        os.rename(tmp, path)
        self.changed = False


def read_message(path: str, st: Optional[os.stat_result] = None) -> Dict[str, Any]:
    """Envelope of one queue file (opened read-only, never locked)."""
    fd = os.open(path, _READ_FLAGS)
    try:
        if st is None:
            st = os.fstat(fd)
        return read_envelope(fd, None, st.st_size)
    finally:
        os.close(fd)


def _read_queue_file(path: str) -> Dict[str, Any]:
    """read_message() without a stat: one open and, for most files, one read.

    The file size only matters for files without a C record (maildrop);
    those alone get an lstat, as walk_queue() used to give every file.
    """
    fd = os.open(path, _READ_FLAGS)
    try:
        env = read_envelope(fd, os.read(fd, HEAD_BYTES))
    finally:
        os.close(fd)
    if env["message_size"] is None:
        env["message_size"] = os.lstat(path).st_size  # as postqueue does for maildrop files
    return env


def _read_small(path: str) -> bytes:
    """The first DEFER_LOG_LIMIT bytes of a file.

    Reads HEAD_BYTES first: asking os.read() for 1 MiB allocates a 1 MiB
    buffer per call, which cost more than the rest of a queue walk.
    """
    fd = os.open(path, _READ_FLAGS)
    try:
        data = os.read(fd, HEAD_BYTES)
        if len(data) == HEAD_BYTES:
            data += os.read(fd, DEFER_LOG_LIMIT - HEAD_BYTES)
        return data
    finally:
        os.close(fd)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (if it runs) for the duration.

    A big walk creates several container objects per message, none in a
    cycle; the collector's repeated passes over that growing heap cost
    about 15% of the walk.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_entries_serial(entries: Iterable[Tuple[str, str, str]], defer_logs: Dict[str, str]
                         ) -> Tuple[List[Dict[str, Any]], List[Dict[str, str]]]:
    """walk_queue()'s messages and errors for the given entries, in this process.

    Equal strings and defer-log entries are shared between messages (a big
    queue repeats a few senders, recipients and reasons): less memory, and
    marshal writes a repeat as a back-reference, so a saved cache loads fast.
    Treat the messages as read-only.
    """
    messages: List[Dict[str, Any]] = []
    errors: List[Dict[str, str]] = []
    shared: Dict[Any, Any] = {}
    one = shared.setdefault
    for queue, queue_id, path in entries:
        try:
            env = _read_queue_file(path)
        except FileNotFoundError:
            continue
        except (OSError, QueueFileError, ValueError, IndexError) as exc:
            errors.append({"path": path, "error": str(exc)})
            continue
        sender = env["sender"]
        msg = {
            "queue_name": queue, "queue_id": queue_id,
            "arrival_time": env["arrival_time"], "message_size": env["message_size"],
            "sender": one(sender, sender) if sender is not None else None,
            "recipients": [one(r, r) for r in env["recipients"]],
        }
        log = defer_logs.get(queue_id)
        if log:
            try:
                reasons = parse_defer_log(_read_small(log))
            except FileNotFoundError:
                reasons = None
            if reasons is not None:
                msg["reasons"] = {one(r, r): one(tuple(sorted(info.items())), info) for r, info in reasons.items()}
        messages.append(msg)
    return messages, errors


PARALLEL_MIN_FILES = 5000  # below this a second process costs more than it saves


def _worth_forking(entries: List[Tuple[str, str, str]]) -> bool:
    """Read in two processes: a big queue, two usable CPUs, and no threads.

    Threads rule fork out: a child of a threaded process may inherit locks
    another thread held (the exporter may be threaded; modules are not).
    """
    if len(entries) < PARALLEL_MIN_FILES or not hasattr(os, "fork"):
        return False
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cpus > 1 and threading.active_count() == 1


def _child_read(entries: List[Tuple[str, str, str]], defer_logs: Dict[str, str], rfd: int, wfd: int) -> None:
    """In the forked child: read entries, send (messages, errors) marshalled, exit."""
    code = 1
    try:
        os.close(rfd)
        data = memoryview(marshal.dumps(_read_entries_serial(entries, defer_logs)))
        while data:
            data = data[os.write(wfd, data):]
        code = 0
    finally:
        os._exit(code)  # never return into the parent's code, never run its cleanup


def _read_entries_forked(entries: List[Tuple[str, str, str]], defer_logs: Dict[str, str]
                         ) -> Tuple[List[Dict[str, Any]], List[Dict[str, str]]]:
    """_read_entries_serial() with the second half read by a forked child meanwhile.

    The halves are contiguous, so messages and errors keep the serial order.
    Reading is mostly syscalls and parsing, so two CPUs almost halve it;
    marshal (plain str/int/list/dict) is the cheapest way back.  If the
    child fails for any reason, this process reads its half itself.
    """
    half = len(entries) // 2
    rfd, wfd = os.pipe()
    try:
        pid = os.fork()
    except OSError:  # no process to spare: read serially
        os.close(rfd)
        os.close(wfd)
        return _read_entries_serial(entries, defer_logs)
    if pid == 0:
        _child_read(entries[half:], defer_logs, rfd, wfd)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as pipe:
        try:
            messages, errors = _read_entries_serial(entries[:half], defer_logs)
            data = pipe.read()
        except BaseException:
            os.kill(pid, signal.SIGKILL)
            raise
        finally:
            status = os.waitpid(pid, 0)[1]
    try:
        rest = marshal.loads(data) if status == 0 else None
    except (EOFError, ValueError, TypeError):
        rest = None
    if rest is None:
        rest = _read_entries_serial(entries[half:], defer_logs)
    messages.extend(rest[0])
    errors.extend(rest[1])
    return messages, errors


def _cached_walk(queue_dir: str, entries: List[Tuple[str, str, str]], entry_inodes: List[int],
                 defer_logs: Dict[str, str], log_inodes: Dict[str, int], cache: EnvelopeCache
                 ) -> Tuple[List[Dict[str, Any]], List[Dict[str, str]]]:
    """walk_queue() reading only files changed since the cache saw them.

    One stat per file (or one XFS bulk stat for the whole volume) decides;
    the changed ones are read as without a cache, in two processes if many.
    Messages come back unchanged ones first.
    """
    stats = bulk_stat(queue_dir)
    lookup = stats.get if stats is not None else {}.get

    def key_of(path: str, ino: int) -> Optional[Tuple[int, int, int]]:
        fst = lookup(ino)
        if fst is None:  # no bulk stat, or a file newer than it
            try:
                fst = file_stat(os.lstat(path))
            except FileNotFoundError:
                return None
        return (fst[0], fst[5], fst[4])  # inode, ctime, size: see verified_key()

    results: List[Dict[str, Any]] = []
    misses: List[Tuple[str, str, str]] = []
    miss_keys: List[Any] = []
    get = cache.get
    for entry, ino in zip(entries, entry_inodes):
        qkey = key_of(entry[2], ino)
        if qkey is None:
            continue  # gone since the walk
        log = defer_logs.get(entry[1])
        key = (qkey, key_of(log, log_inodes[entry[1]]) if log else None)
        msg = get(entry[2], key)
        if msg is None:
            misses.append(entry)
            miss_keys.append(key)
        else:
            results.append(msg)
    read = _read_entries_forked if _worth_forking(misses) else _read_entries_serial
    messages, errors = read(misses, defer_logs)
    by_id = {(m["queue_name"], m["queue_id"]): m for m in messages}
    for (queue, queue_id, path), key in zip(misses, miss_keys):
        msg = by_id.get((queue, queue_id))
        if msg is not None:
            cache.put(path, key, msg)
            results.append(msg)
    cache.prune()
    return results, errors


def walk_queue(queue_dir: str, queues: Iterable[str] = MESSAGE_QUEUES, with_reasons: bool = True,
               cache: Optional[EnvelopeCache] = None) -> Tuple[List[Dict[str, Any]], List[Dict[str, str]]]:
    """Read every message in the named queues of one queue directory.

    Returns (messages, errors).  Each message has queue_name, queue_id,
    arrival_time, message_size, sender, recipients (pending) and, when
    with_reasons, reasons {recipient: {status, reason}} from defer/.
    Files that vanish mid-walk (delivered meanwhile) are skipped silently;
    unreadable or malformed ones are listed in errors.  Big queues are read
    by two processes (see _worth_forking); the result is the same.  With a
    cache, only files changed since it saw them are read.
    """
    with _gc_paused():
        defer_logs: Dict[str, str] = {}
        log_inodes: Dict[str, int] = {}
        if with_reasons:
            for entry in _walk_files(os.path.join(queue_dir, "defer")):
                defer_logs[entry.name] = entry.path
                log_inodes[entry.name] = entry.inode()
        entries = []
        entry_inodes = []
        for queue in queues:
            for entry in _walk_files(os.path.join(queue_dir, queue)):
                if is_queue_id(entry.name):  # temp files and strays: the integrity scan's business
                    entries.append((queue, entry.name, entry.path))
                    entry_inodes.append(entry.inode())
        if cache is not None:
            return _cached_walk(queue_dir, entries, entry_inodes, defer_logs, log_inodes, cache)
        read = _read_entries_forked if _worth_forking(entries) else _read_entries_serial
        return read(entries, defer_logs)


# --------------------------------------------------------------------------
# Summaries


def age_bucket(age_seconds: float) -> str:
    minutes = age_seconds / 60.0
    for limit, key in zip(AGE_BUCKETS_MINUTES, AGE_BUCKET_KEYS):
        if minutes < limit:
            return key
    return "1280+"


def age_histogram(ages: Iterable[float]) -> Dict[str, int]:
    hist = dict.fromkeys(AGE_BUCKET_KEYS, 0)
    for age in ages:
        hist[age_bucket(age)] += 1
    return hist


def recipient_domain(address: str) -> str:
    return address.rpartition("@")[2].lower() if "@" in address else ""


def display_sender(sender: Optional[str]) -> str:
    return sender if sender else "MAILER-DAEMON"


def _top(counter: Counter, top_n: int, key: str) -> List[Dict[str, Any]]:
    ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:top_n]
    return [{key: k, "count": v} for k, v in ranked]


def _age_counts(ages: List[int]) -> Dict[str, int]:
    """age_histogram() of whole, non-negative seconds, from one sort.

    For such ages, age / 60.0 < limit exactly when age < limit * 60.
    """
    ages.sort()
    below = [bisect.bisect_left(ages, limit * 60) for limit in AGE_BUCKETS_MINUTES] + [len(ages)]
    return dict(zip(AGE_BUCKET_KEYS, (n - prev for n, prev in zip(below, [0] + below))))


def _domain_counts(recipients: List[str]) -> Counter:
    """Counter of recipient_domain() over recipients, one call per distinct address."""
    domains: Counter = Counter()
    for rcpt, count in Counter(recipients).items():
        domains[recipient_domain(rcpt)] += count
    return domains


def summarize(messages: List[Dict[str, Any]], now: float, top_n: int = 10) -> Dict[str, Any]:
    """Per-queue counts, bytes, age histogram, oldest age, top domains and reasons.

    Domains count pending recipients (as qshape does); reasons count
    deferred recipients, each classified with classify_reason().
    """
    # One pass collecting plain lists per queue (ages, sizes, recipients) and
    # a tally of distinct deferral reasons; the per-message work is list
    # appends, the counting happens once per queue or per distinct value.
    collected: Dict[str, Tuple[List[int], List[int], List[str]]] = {q: ([], [], []) for q in MESSAGE_QUEUES}
    deferrals: Counter = Counter()  # (reason, status, reason or "") -> deferred recipients
    with _gc_paused():  # a tuple per deferred recipient
        for msg in messages:
            acc = collected.get(msg["queue_name"])
            if acc is None:
                acc = collected[msg["queue_name"]] = ([], [], [])
            age = int(now - msg["arrival_time"])
            acc[0].append(age if age > 0 else 0)
            acc[1].append(msg["message_size"] or 0)
            pending = msg["recipients"]
            acc[2].extend(pending)
            for rcpt, info in (msg.get("reasons") or {}).items():
                if isinstance(info, str):  # postqueue -j gives the text only
                    info = {"reason": info}
                if rcpt in pending:  # else delivered since that attempt
                    deferrals[(info.get("reason"), info.get("status"), info.get("reason", ""))] += 1
    queues: Dict[str, Dict[str, Any]] = {}
    all_domains: Counter = Counter()
    for name, (ages, sizes, recipients) in collected.items():
        domains = _domain_counts(recipients)
        all_domains.update(domains)
        hist = _age_counts(ages)
        queues[name] = {"count": len(ages), "bytes": sum(sizes), "recipients": len(recipients),
                        "oldest_age": ages[-1] if ages else 0, "age_histogram": hist,
                        "top_domains": _top(domains, top_n, "domain")}
    reasons: Counter = Counter()
    classes: Counter = Counter()
    for (reason, status, label), count in deferrals.items():
        cls = classify_reason(reason, status)
        classes[cls] += count
        reasons[(cls, label)] += count
    top_reasons = [{"class": k[0], "reason": k[1], "count": v}
                   for k, v in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:top_n]]
    return {
        "queues": queues,
        "total": {"count": sum(q["count"] for q in queues.values()),
                  "bytes": sum(q["bytes"] for q in queues.values()),
                  "recipients": sum(q["recipients"] for q in queues.values())},
        "oldest_age": max([q["oldest_age"] for q in queues.values()] + [0]),
        "top_domains": _top(all_domains, top_n, "domain"),
        "top_reasons": top_reasons,
        "reason_classes": {c: classes.get(c, 0) for c in REASON_CLASSES},
    }


# --------------------------------------------------------------------------
# Selection (postfix_queue module)

_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> int:
    """Seconds in a Postfix-style duration: 300, "300s", "5m", "1h", "2d", "1w"."""
    if isinstance(value, bool):
        raise ValueError("duration %r is not a number with an optional unit s/m/h/d/w" % (value,))
    if isinstance(value, int):
        if value < 0:
            raise ValueError("duration %r is negative" % (value,))
        return value
    match = _DURATION_RE.match(str(value))
    if not match:
        raise ValueError("duration %r is not a number with an optional unit s/m/h/d/w" % (value,))
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def select_messages(messages: Iterable[Dict[str, Any]], now: float, queues: Optional[Iterable[str]] = None,
                    domain: Optional[str] = None, sender: Optional[str] = None, min_age: Optional[int] = None,
                    queue_ids: Optional[Iterable[str]] = None) -> List[Dict[str, Any]]:
    """Messages matching every given selector (None = no constraint).

    domain matches a pending recipient's domain, case-insensitively; a
    leading dot (".example.com") also matches its subdomains.  sender ""
    or "MAILER-DAEMON" selects bounces (the null sender).
    """
    qset = set(queues) if queues else None
    idset = set(queue_ids) if queue_ids else None
    dom = domain.lower() if domain else None
    snd = None if sender is None else ("" if sender in ("", "MAILER-DAEMON", "<>") else sender.lower())
    chosen = []
    for msg in messages:
        if qset is not None and msg["queue_name"] not in qset:
            continue
        if idset is not None and msg["queue_id"] not in idset:
            continue
        if min_age is not None and now - msg["arrival_time"] < min_age:
            continue
        if snd is not None and (msg["sender"] or "").lower() != snd:
            continue
        if dom is not None and not any(_domain_matches(recipient_domain(r), dom) for r in msg["recipients"]):
            continue
        chosen.append(msg)
    return chosen


def selected_queue_ids(config_dir: str, queues: Iterable[str], domain: Optional[str] = None,
                       sender: Optional[str] = None, min_age: Optional[str] = None,
                       queue_ids: Optional[Iterable[str]] = None, now: Optional[float] = None,
                       runner: Callable[..., Any] = subprocess.run) -> Tuple[List[str], List[Dict[str, str]]]:
    """IDs (sorted) of the messages in `queues` of the instance at config_dir that match every
    given selector (see select_messages), and the queue files that could not be read.

    What the modules acting on a selection share.  Raises ValueError naming the bad selector
    value, or the configuration directory whose settings cannot be read.
    """
    for qid in queue_ids or []:
        if not postsuper_safe_id(qid):
            raise ValueError("queue_ids: %r is not a Postfix queue ID (letters and digits only, not ALL)" % qid)
    age = None
    if min_age not in (None, ""):
        try:
            age = parse_duration(min_age)
        except ValueError as exc:
            raise ValueError("min_age: %s" % exc) from None
    try:
        queue_dir = instance_settings(config_dir, runner)["queue_directory"]
    except (OSError, RuntimeError, ValueError) as exc:
        raise ValueError("cannot read the settings of config_dir=%s: %s" % (config_dir, exc)) from None
    queues = list(queues)
    messages, errors = walk_queue(queue_dir, queues=queues, with_reasons=False)
    chosen = select_messages(messages, time.time() if now is None else now, queues=queues, domain=domain,
                             sender=sender, min_age=age, queue_ids=queue_ids)
    return sorted(m["queue_id"] for m in chosen if postsuper_safe_id(m["queue_id"])), errors


def _domain_matches(candidate: str, wanted: str) -> bool:
    if wanted.startswith("."):
        return candidate == wanted[1:] or candidate.endswith(wanted)
    return candidate == wanted


# --------------------------------------------------------------------------
# Integrity scan

REASON_ORDER = ("not-regular", "temp-orphan", "bad-name", "zero-length", "not-ready", "bad-mode",
                "bad-owner", "truncated", "unknown-record", "bad-record", "misplaced")

# What the scan needs of a file's inode, as a plain tuple (cheap to build by
# the hundred thousand): (inode, mode, uid, gid, size, ctime in ns).
FileStat = Tuple[int, int, int, int, int, int]


def file_stat(st: os.stat_result) -> FileStat:
    return (st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_ctime_ns)


# XFS bulkstat (xfs_fs.h): one ioctl returns the inodes of a whole filesystem,
# thousands per call, where lstat() costs a syscall per file.
XFS_IOC_BULKSTAT = 0x8040587F  # _IOR('X', 127, struct xfs_bulk_ireq)
_BULK_IREQ = struct.Struct("=QIIII40x")  # ino cursor, flags, icount, ocount, agno, reserved
# struct xfs_bulkstat (192 bytes): ino@0 size@8 ctime@48 uid@68 gid@72 ctime_nsec@88 version@124 mode@132.
_BULKSTAT = struct.Struct("=QQ32xq12xII12xI32xH6xH58x")
_BULKSTAT_VERSION = 5
_BULK_BATCH = 4096


def _bulkstat_batches(mountpoint: str) -> Iterator[memoryview]:
    """Raw struct xfs_bulkstat records of every inode of the filesystem, one batch per ioctl.

    Raises OSError when the ioctl is refused (not XFS, no CAP_SYS_ADMIN).  Each
    batch lives in one reused buffer: consume it before asking for the next.
    """
    buf = bytearray(_BULK_IREQ.size + _BULKSTAT.size * _BULK_BATCH)
    cursor = 0
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # Bulk stat reads the on-disk inode, whose size lags behind data not yet written back
        # (0 for a file just copied in): flush this filesystem first so sizes agree with lstat().
        ctypes.CDLL(None, use_errno=True).syncfs(fd)
        while True:
            _BULK_IREQ.pack_into(buf, 0, cursor, 0, _BULK_BATCH, 0, 0)
            fcntl.ioctl(fd, XFS_IOC_BULKSTAT, buf, True)
            cursor, _flags, _icount, ocount, _agno = _BULK_IREQ.unpack_from(buf, 0)
            if not ocount:
                return
            yield memoryview(buf)[_BULK_IREQ.size:_BULK_IREQ.size + _BULKSTAT.size * ocount]
    finally:
        os.close(fd)


def bulk_stat(mountpoint: str) -> Optional[Dict[int, FileStat]]:
    """FileStat of every inode on the XFS filesystem mounted at mountpoint.

    None when that is not possible (not a mountpoint, not XFS, or no
    CAP_SYS_ADMIN); callers then lstat() each file.  Only for a mountpoint:
    the queue volume holds just the queue, a root filesystem holds everything.
    """
    if not os.path.ismount(mountpoint):
        return None
    stats: Dict[int, FileStat] = {}
    try:
        for records in _bulkstat_batches(mountpoint):
            for ino, size, ctime, uid, gid, nsec, version, mode in _BULKSTAT.iter_unpack(records):
                if version != _BULKSTAT_VERSION:
                    return None
                stats[ino] = (ino, mode, uid, gid, size, ctime * 1000000000 + nsec)
    except OSError:
        return None
    # A misread layout must never pass for data: the mountpoint's own inode has to agree with lstat().
    if stats.get(os.lstat(mountpoint).st_ino) != file_stat(os.lstat(mountpoint)):
        return None
    return stats


def _walk_dirs(top: str, parts: Tuple[str, ...] = ()) -> Iterator[Tuple[Tuple[str, ...], List[os.DirEntry]]]:
    """(subdirectory names below top, non-directory entries) per directory."""
    try:
        it = os.scandir(os.path.join(top, *parts))
    except FileNotFoundError:
        return
    with it:
        files, dirs = [], []
        for entry in it:
            (dirs if entry.is_dir(follow_symlinks=False) else files).append(entry)
    yield parts, files
    for entry in dirs:
        yield from _walk_dirs(top, parts + (entry.name,))


def inspect_file(path: str, name: str, queue: str, fst: FileStat, expected_parts: Optional[Tuple[str, ...]],
                 parts: Tuple[str, ...], owner_uid: Optional[int], postdrop_gid: Optional[int]
                 ) -> Optional[Tuple[str, str]]:
    """(reason, detail) when a file in a message queue is suspect, else None.

    parts are the file's subdirectories below its queue, expected_parts the
    ones its name hashes to (() in an unhashed queue), or None when the name
    is not a queue ID (then nothing else is checked).
    """
    _ino, mode, uid, gid, size, _ctime = fst
    if not stat.S_ISREG(mode):
        return "not-regular", "not a regular file (mode %o)" % mode
    if expected_parts is None and not is_queue_id(name):
        if _TEMP_NAME_RE.match(name):
            return "temp-orphan", "temporary file left by an interrupted queue file creation"
        return "bad-name", "file name is not a queue ID"
    if size == 0:
        return "zero-length", "empty queue file"
    perms = stat.S_IMODE(mode)
    if perms & stat.S_IRWXU != stat.S_IRWXU:
        return "not-ready", "mode %04o: the file was never completed (Postfix sets u=rwx when done)" % perms
    allowed_extra = 0o044 if queue == "maildrop" else 0o040
    if perms & ~(stat.S_IRWXU | allowed_extra):
        return "bad-mode", "mode %04o has bits Postfix never sets" % perms
    if queue == "maildrop":
        if postdrop_gid is not None and gid != postdrop_gid:
            return "bad-owner", "group %d, expected setgid_group gid %d" % (gid, postdrop_gid)
    elif owner_uid is not None and uid != owner_uid:
        return "bad-owner", "owner %d, expected mail_owner uid %d" % (uid, owner_uid)
    fd = os.open(path, _READ_FLAGS)
    try:
        check_structure(fd, size)
    except QueueFileError as exc:
        return exc.kind, exc.detail
    except (ValueError, IndexError) as exc:
        return "bad-record", str(exc)
    finally:
        os.close(fd)
    if parts != expected_parts:
        return "misplaced", "belongs in %s" % "/".join((queue,) + expected_parts)
    return None


VERIFIED_FILE = ".verified-files"  # in the quarantine directory, so it travels with the volume
_VERIFIED_FORMAT = 3

# struct xfs_bulkstat again, only the fields of a verified_key(): ino@0 size@8 ctime@48 ctime_nsec@88.
_BULK_KEY = struct.Struct("=QQ32xq32xI100x")  # 192 bytes, as _BULKSTAT


def verified_key(fst: FileStat) -> Tuple[int, int, int, int]:
    """What identifies a file, its place and its content without reading it.

    (inode, size, ctime seconds, ctime nanoseconds).  Any write, truncation,
    rename, chmod, chown or utime() sets ctime, and nothing in user space can
    set it back: an unchanged key means unchanged content, name, place, mode
    and owner.  Keys are compared for equality only, so a clock that jumps
    does not fool them.  The layout is the bulk stat's, built there in C.
    """
    return (fst[0], fst[4], fst[5] // 1000000000, fst[5] % 1000000000)


def bulk_keys(mountpoint: str) -> Optional[set]:
    """verified_key() of every inode of the XFS volume at mountpoint (see bulk_stat), or None."""
    if not os.path.ismount(mountpoint):
        return None
    keys: set = set()
    try:
        for records in _bulkstat_batches(mountpoint):
            keys.update(_BULK_KEY.iter_unpack(records))  # key tuples made and hashed in C
    except OSError:
        return None
    # A misread layout must never pass for data: the mountpoint's own inode has to agree with lstat().
    if verified_key(file_stat(os.lstat(mountpoint))) not in keys:
        return None
    return keys


def load_verified(path: str, settings: Any) -> set:
    """Keys of the files the last scan found sound with the same settings (empty when unknown)."""
    try:
        with open(path, "rb") as fh:
            version, saved_settings, flat = marshal.loads(fh.read())
        if version != _VERIFIED_FORMAT or saved_settings != settings:
            return set()
        numbers = array.array("q")
        numbers.frombytes(flat)
    except (OSError, EOFError, ValueError, TypeError):
        return set()
    it = iter(numbers)
    return set(zip(it, it, it, it))


def save_verified(path: str, settings: Any, keys: set) -> None:
    """Replace the verified-files record atomically (write, fsync, rename).

    Flat signed 64-bit integers: marshal of 100,000 tuples of big ints took
    ten times longer to load.
    """
    numbers = array.array("q")
    for key in keys:
        numbers.extend(key)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "wb", opener=lambda p, f: os.open(p, f, 0o600)) as fh:
        fh.write(marshal.dumps((_VERIFIED_FORMAT, settings, numbers.tobytes())))
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, path)
    _fsync_dir(os.path.dirname(path))


def default_quarantine_dir(queue_dir: str) -> str:
    """A quarantine beside the queue directory when on the same filesystem, else inside it.

    Inside is safe: Postfix only looks at its own queue subdirectories.
    """
    queue_dir = os.path.abspath(queue_dir)
    sibling_parent = os.path.dirname(queue_dir)
    if os.stat(sibling_parent).st_dev == os.stat(queue_dir).st_dev:
        return os.path.join(sibling_parent, "durable-mx-quarantine")
    return os.path.join(queue_dir, "durable-mx-quarantine")


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def quarantine_file(src: str, queue_dir: str, batch_dir: str, label: Dict[str, Any]) -> str:
    """Move src under batch_dir keeping its path relative to queue_dir; write a label.

    os.rename only: it never copies, so a message is never in two places or
    none, and it fails (EXDEV) rather than cross filesystems.
    """
    rel = os.path.relpath(src, queue_dir)
    dst = os.path.join(batch_dir, rel)
    os.makedirs(os.path.dirname(dst), mode=0o700, exist_ok=True)
    if os.path.lexists(dst):
        raise FileExistsError("quarantine target %s already exists" % dst)
    os.rename(src, dst)
    label_path = dst + ".label.json"
    fd = os.open(label_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (json.dumps(label, sort_keys=True, indent=1) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(os.path.dirname(dst))
    _fsync_dir(os.path.dirname(src))
    return dst


def _handle_suspect(report: Dict[str, Any], path: str, queue: str, name: str, fst: FileStat,
                    verdict: Tuple[str, str], queue_dir: str, batch_dir: str, dry_run: bool,
                    quarantine_misplaced: bool, now: float) -> None:
    """Record one suspect file in the report and, unless dry_run, quarantine it."""
    _ino, mode, uid, gid, size, _ctime = fst
    reason, detail = verdict
    item = {"path": path, "queue": queue, "queue_id": name, "reason": reason, "detail": detail,
            "size": size, "mode": "%04o" % stat.S_IMODE(mode), "uid": uid, "gid": gid}
    if reason == "misplaced" and not quarantine_misplaced:
        item["action"] = "left for postsuper -s"
        report["misplaced"].append(item)
        return
    if dry_run:
        item["action"] = "would quarantine"
    else:
        label = {"reason": reason, "detail": detail, "original_path": path,
                 "quarantined_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                 "size": size, "mode": item["mode"], "uid": uid, "gid": gid,
                 "tool": "durable-mx-queue-integrity"}
        try:
            item["quarantined_to"] = quarantine_file(path, queue_dir, batch_dir, label)
            item["action"] = "quarantined"
            report["quarantined"] += 1
        except OSError as exc:
            item["action"] = "failed"
            report["errors"].append({"path": path, "error": "quarantine failed: %s" % exc})
    report["suspects"].append(item)


def integrity_scan(queue_dir: str, quarantine_dir: Optional[str] = None, dry_run: bool = False,
                   hash_queue_names: Iterable[str] = DEFAULT_HASH_QUEUE_NAMES,
                   hash_queue_depth: int = DEFAULT_HASH_QUEUE_DEPTH, owner_uid: Optional[int] = None,
                   postdrop_gid: Optional[int] = None, quarantine_misplaced: bool = False,
                   full: bool = False, now: Optional[float] = None, seal_dir: Optional[str] = None,
                   seal: bool = False) -> Dict[str, Any]:
    """Find suspect queue files and move them to a quarantine on the same volume (see _scan).

    With seal_dir, a clean stop lets the next start skip the walk.  seal=True (run after
    Postfix stopped) scans without moving anything and, when the queue is clean and the
    volume's fingerprint stood still during the scan, records that fingerprint as a seal.  The
    next scan without seal consumes the seal: the same fingerprint means no inode of the
    volume was created, removed, written, renamed, chmod'ed or chown'ed since that clean scan
    (see verified_key), so there is nothing to look at; otherwise it scans.  A power cut or a
    crash leaves no fresh seal (Postfix writes to its volume as soon as it runs), so the start
    after one always scans.  Suspects are only ever moved by the start-up scan, whose report
    the exporter shows.  The seal lives off the queue volume: writing it must not change what
    it describes, and a volume adopted by another node brings none.
    """
    settings = _integrity_settings(hash_queue_names, hash_queue_depth, owner_uid, postdrop_gid)
    queue_dir = os.path.abspath(queue_dir)
    seal_path = os.path.join(seal_dir, queue_dir.strip("/").replace("/", "_") + ".seal.json") if seal_dir else None
    scan = functools.partial(_scan, queue_dir, quarantine_dir=quarantine_dir, dry_run=dry_run or seal,
                             hash_queue_names=hash_queue_names, hash_queue_depth=hash_queue_depth,
                             owner_uid=owner_uid, postdrop_gid=postdrop_gid,
                             quarantine_misplaced=quarantine_misplaced, full=full, now=now)
    if seal_path is None:
        return scan()
    stored = _take_seal(seal_path)  # a seal is used at most once, whatever happens next
    if seal:
        before = volume_fingerprint(queue_dir)
        report = scan()
        # Equal fingerprints: nothing (a postdrop, say) changed the volume while the scan ran.
        if report["clean"] and before is not None and volume_fingerprint(queue_dir) == before:
            _write_seal(seal_path, {"settings": settings, "fingerprint": before, "scanned": report["scanned"],
                                    "corrupt_queue_files": report["corrupt_queue_files"], "sealed_at": time.time()})
            report["seal"] = "written"
        else:
            report["seal"] = "not written"
        return report
    if stored is not None and not full and stored.get("settings") == settings \
            and stored.get("fingerprint") == volume_fingerprint(queue_dir):
        return {"queue_directory": queue_dir, "dry_run": dry_run, "scanned": stored["scanned"],
                "suspects": [], "misplaced": [], "quarantined": 0, "errors": [], "clean": True,
                "corrupt_queue_files": stored["corrupt_queue_files"], "full": False,
                "unchanged_since_last_scan": stored["scanned"], "seal": "matched", "sealed_at": stored["sealed_at"]}
    report = scan()
    report["seal"] = "absent" if stored is None else "stale"
    return report


def _integrity_settings(hash_queue_names: Iterable[str], hash_queue_depth: int, owner_uid: Optional[int],
                        postdrop_gid: Optional[int]) -> List[Any]:
    """What the checks depend on besides the file: another setting makes every earlier verdict void."""
    return [sorted(set(hash_queue_names)), hash_queue_depth, owner_uid, postdrop_gid]


_SEAL_FORMAT = 1


def _take_seal(path: str) -> Optional[Dict[str, Any]]:
    """The seal at path, removed; None when there is none or it is unreadable."""
    try:
        with open(path) as fh:
            stored = json.load(fh)
    except (OSError, ValueError):
        return None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return stored if isinstance(stored, dict) and stored.get("format") == _SEAL_FORMAT else None


def _write_seal(path: str, content: Dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w", opener=lambda p, f: os.open(p, f, 0o600)) as fh:
        json.dump(dict(content, format=_SEAL_FORMAT), fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, path)
    _fsync_dir(os.path.dirname(path))


# verified_key()'s bytes in struct xfs_bulkstat: ino@0 size@8 (16 bytes), ctime@48 (8), ctime_nsec@88 (4).
_KEY_OFFSETS = tuple(range(0, 16)) + tuple(range(48, 56)) + tuple(range(88, 92))
_VERSION_OFFSET = 124


def volume_fingerprint(mountpoint: str) -> Optional[str]:
    """Digest of verified_key() of every inode of the XFS volume at mountpoint, or None.

    None when bulk stat is not possible (see bulk_stat).  Each key byte is cut out of a batch
    as one strided slice, all in C: no Python object per inode, so 200,000 inodes cost about
    what the bulk stat ioctl itself costs.
    """
    if not os.path.ismount(mountpoint):
        return None
    digest = hashlib.sha256()
    count = 0
    try:
        for records in _bulkstat_batches(mountpoint):
            raw = records.tobytes()
            n = len(raw) // _BULKSTAT.size
            # A layout we misread must never pass for data.
            if raw[_VERSION_OFFSET::_BULKSTAT.size].count(_BULKSTAT_VERSION) != n:
                return None
            count += n
            for offset in _KEY_OFFSETS:
                digest.update(raw[offset::_BULKSTAT.size])
    except OSError:
        return None
    return "%d:%s" % (count, digest.hexdigest())


def _scan(queue_dir: str, quarantine_dir: Optional[str] = None, dry_run: bool = False,
          hash_queue_names: Iterable[str] = DEFAULT_HASH_QUEUE_NAMES,
          hash_queue_depth: int = DEFAULT_HASH_QUEUE_DEPTH, owner_uid: Optional[int] = None,
          postdrop_gid: Optional[int] = None, quarantine_misplaced: bool = False,
          full: bool = False, now: Optional[float] = None) -> Dict[str, Any]:
    """Find suspect queue files and move them to a quarantine on the same volume.

    Suspects: non-regular files, orphaned temp files, non-queue-ID names,
    empty files, files never completed (owner bits not rwx), stray mode bits,
    wrong owner (or maildrop group), truncated files (no END record),
    unknown record types.  Files in the wrong hash directory ("misplaced")
    are only reported unless quarantine_misplaced: `postsuper -s` moves them
    back into place, which is what a hash_queue_depth change needs.
    The corrupt queue is Postfix's own quarantine and is only counted.
    Nothing is ever deleted.  Returns a JSON-serialisable report.

    A file whose verified_key() is unchanged since a scan with the same
    settings found it sound is not looked at again: no write, rename, chmod
    or chown can have happened to it.  The keys are kept in VERIFIED_FILE in
    the quarantine directory; full ignores them.  A scan that is not a dry
    run rewrites that record with the files it found sound.
    """
    now = time.time() if now is None else now
    queue_dir = os.path.abspath(queue_dir)
    hash_names = set(hash_queue_names)
    quarantine_dir = os.path.abspath(quarantine_dir) if quarantine_dir else default_quarantine_dir(queue_dir)
    if os.stat(_nearest_existing(quarantine_dir)).st_dev != os.stat(queue_dir).st_dev:
        raise ValueError("quarantine directory %s is not on the filesystem of %s; a move there would be a copy"
                         % (quarantine_dir, queue_dir))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    batch_dir = os.path.join(quarantine_dir, stamp)
    verified_path = os.path.join(quarantine_dir, VERIFIED_FILE)
    settings = _integrity_settings(hash_names, hash_queue_depth, owner_uid, postdrop_gid)
    verified = set() if full else load_verified(verified_path, settings)
    report: Dict[str, Any] = {
        "queue_directory": queue_dir, "quarantine_directory": batch_dir, "dry_run": dry_run,
        "scanned": 0, "suspects": [], "misplaced": [], "quarantined": 0, "errors": [],
        "corrupt_queue_files": 0, "full": full or not verified, "unchanged_since_last_scan": 0,
    }
    # Inodes whose key is unchanged since a scan found them sound need no check at all. On the
    # queue volume one bulk stat and a set intersection (both in C) find them; elsewhere each
    # file's lstat() key is looked up.
    current = bulk_keys(queue_dir) if verified else None
    unchanged_keys = current & verified if current is not None else set()
    unchanged = {key[0] for key in unchanged_keys}
    sound: set = set()
    for queue in MESSAGE_QUEUES:
        hashed = queue in hash_names
        for parts, entries in _walk_dirs(os.path.join(queue_dir, queue)):
            if queue == "corrupt":
                report["corrupt_queue_files"] += len(entries)
                continue
            report["scanned"] += len(entries)
            for entry in entries:
                if entry.inode() in unchanged:
                    continue
                name = entry.name
                try:
                    fst = file_stat(entry.stat(follow_symlinks=False))
                    key = verified_key(fst)
                    if key in verified:
                        unchanged_keys.add(key)
                        continue
                    if not is_queue_id(name):
                        expected = None  # inspect_file says what it is
                    else:
                        expected = tuple(hash_dirs(name, hash_queue_depth)) if hashed else ()
                    verdict = inspect_file(entry.path, name, queue, fst, expected, parts, owner_uid, postdrop_gid)
                except FileNotFoundError:
                    continue  # delivered or moved while we looked: not ours to judge
                except (OSError, KeyError) as exc:
                    report["errors"].append({"path": entry.path, "error": str(exc)})
                    continue
                if verdict is None:
                    sound.add(key)
                else:
                    _handle_suspect(report, entry.path, queue, name, fst, verdict, queue_dir, batch_dir,
                                    dry_run, quarantine_misplaced, now)
    report["unchanged_since_last_scan"] = len(unchanged_keys)
    sound |= unchanged_keys
    report["clean"] = not report["suspects"] and not report["misplaced"] and not report["errors"]
    if not dry_run and sound != verified:
        save_verified(verified_path, settings, sound)
    return report


# --------------------------------------------------------------------------
# postsuper actions (postfix_queue module)

# postsuper flag and the queues whose messages the action can change.
ACTIONS = {
    "hold": ("-h", ("maildrop", "incoming", "active", "deferred")),
    "release": ("-H", ("hold",)),
    "requeue": ("-r", ("incoming", "active", "deferred", "hold")),
    "delete": ("-d", ("maildrop", "incoming", "active", "deferred", "hold")),
    "expire": ("-e", ("incoming", "active", "deferred", "hold")),
}
CONFIRM_VALUES = {"delete": "yes-delete-all", "expire": "yes-expire-all"}
_POSTSUPER_DONE_RE = re.compile(r"^postsuper: ([0-9A-Za-z]+): (placed on hold|released from hold|requeued|removed|expired)\s*$")


def refuse_unselective(action: str, selectors: Dict[str, Any], confirm: Optional[str]) -> Optional[str]:
    """Why an action must not run (None when it may).

    A delete or expire without any selector would hit every message of the
    instance; it needs the exact confirmation value.
    """
    if action not in CONFIRM_VALUES or any(v not in (None, [], "") for v in selectors.values()):
        return None
    if confirm == CONFIRM_VALUES[action]:
        return None
    return ("action=%s without any selector (queue, domain, sender, min_age, queue_ids) would affect every "
            "message; got confirm=%r, set confirm=%r to really do that"
            % (action, confirm, CONFIRM_VALUES[action]))


def postsuper_command(action: str, config_dir: Optional[str]) -> List[str]:
    """One postsuper call reading the ID list from stdin (IDs must pass postsuper_safe_id)."""
    flag = ACTIONS[action][0]
    return ["postsuper"] + (["-c", config_dir] if config_dir else []) + [flag, "-"]


def parse_postsuper_output(text: str) -> List[str]:
    """Queue IDs postsuper reports as changed, in its order."""
    changed = []
    for line in text.splitlines():
        match = _POSTSUPER_DONE_RE.match(line.strip())
        if match:
            changed.append(match.group(1))
    return changed


# --------------------------------------------------------------------------
# Ownership of a queue that moves to another node (runbook adopt)


def queue_owner_ids(entries: Iterable[Tuple[str, int, int, bool]], owner_uid: int, setgid_gid: int) -> Optional[int]:
    """The primary group of a queue's mail_owner, seen on its files: the group of the first regular
    file the owner has that is not in setgid_group (queue files carry the daemons' uid and gid)."""
    for _path, uid, gid, regular in entries:
        if regular and uid == owner_uid and gid != setgid_gid:
            return gid
    return None


def remap_queue_owners(queue_dir: str, new_uid: int, new_gid: int, new_setgid_gid: int,
                       dry_run: bool = False) -> Dict[str, Any]:
    """Give a queue written by another node's Postfix the IDs of this node's Postfix.

    The other node's IDs are read from the queue itself: `active` belongs to its mail_owner,
    `public` to its setgid_group, and its queue files to the owner's primary group. Every
    file and directory of the queue's filesystem with one of those IDs gets the matching
    local one in a single pass (lchown; so a swap of two IDs cannot mix them up). Other IDs
    (root, maildrop files of local users) stay.
    """
    owner_uid = os.stat(os.path.join(queue_dir, "active")).st_uid
    setgid_gid = os.stat(os.path.join(queue_dir, "public")).st_gid
    device = os.stat(queue_dir).st_dev
    entries: List[Tuple[str, int, int, bool]] = []
    for top, dirs, files in os.walk(queue_dir):
        kept = []
        for name in dirs + files:
            path = os.path.join(top, name)
            st = os.lstat(path)
            if st.st_dev != device:
                continue  # another filesystem mounted inside: not this queue's
            entries.append((path, st.st_uid, st.st_gid, stat.S_ISREG(st.st_mode)))
            if name in dirs and stat.S_ISDIR(st.st_mode):
                kept.append(name)
        dirs[:] = kept
    root = os.lstat(queue_dir)
    entries.append((queue_dir, root.st_uid, root.st_gid, False))
    owner_gid = queue_owner_ids(entries, owner_uid, setgid_gid)
    uid_map = {owner_uid: new_uid} if owner_uid != new_uid else {}
    gid_map = {setgid_gid: new_setgid_gid} if setgid_gid != new_setgid_gid else {}
    if owner_gid is not None and owner_gid != new_gid:
        gid_map[owner_gid] = new_gid
    changed = []
    for path, uid, gid, _regular in entries:
        if uid in uid_map or gid in gid_map:
            if not dry_run:
                os.lchown(path, uid_map.get(uid, uid), gid_map.get(gid, gid))
            changed.append(path)
    return {
        "previous": {"mail_owner_uid": owner_uid, "mail_owner_gid": owner_gid, "setgid_gid": setgid_gid},
        "current": {"mail_owner_uid": new_uid, "mail_owner_gid": new_gid, "setgid_gid": new_setgid_gid},
        "uid_map": uid_map,
        "gid_map": gid_map,
        "examined": len(entries),
        "changed": len(changed),
        "changed_sample": changed[:10],
        "dry_run": dry_run,
    }
