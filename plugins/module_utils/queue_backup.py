# -*- coding: utf-8 -*-
# Copyright: durable-mx contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backups of a Postfix instance: its configuration and a consistent copy of its queue.

Standard library only (imported through Ansiballz by modules postfix_queue_backup and
postfix_queue_restore, and by the unit tests).

A backup of one instance is three files in the backup's directory (its ID is the directory
name): INSTANCE.queue.tar.gz, INSTANCE.config.tar.gz and INSTANCE.manifest.json, which names
both archives with their sha256 and lists the queue IDs per queue. A restore trusts nothing it
has not checked against that manifest.

Consistency: the queue is read while its XFS volume is frozen (FIFREEZE through xfs_freeze), so
every message is in exactly one queue directory with the content it had at one instant; Postfix
only renames, writes and unlinks, and each of those waits until the thaw. A file being written
at that instant (not yet 0700) is a message nobody acknowledged: the integrity scan of the
restore quarantines it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import time
from typing import Any, Callable, Dict, Iterable, List, Optional

try:
    from ansible.module_utils.postfix_queue import MESSAGE_QUEUES, is_queue_id
except ImportError:  # imported directly (unit tests), beside postfix_queue.py
    from postfix_queue import MESSAGE_QUEUES, is_queue_id  # type: ignore[no-redef]

MANIFEST_FORMAT = 1
# What a queue backup holds: the message queues and the per-message logs (defer, bounce, trace)
# and fast-flush logs. Not the sockets (private, public), pid, the chroot copies (etc, lib, usr,
# dev: Postfix writes them at start) nor our quarantine: they are not mail.
QUEUE_TREES = MESSAGE_QUEUES + ("defer", "bounce", "trace", "flush", "saved")
XFS_FREEZE = "/usr/sbin/xfs_freeze"
CHUNK = 1 << 20


class BackupError(RuntimeError):
    """A backup or restore step that cannot go on; the message says what to fix."""


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str, data: Dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, path)
    fsync_path(os.path.dirname(path) or ".")


def mount_of(path: str, mountinfo: str = "/proc/self/mountinfo") -> Dict[str, str]:
    """{mountpoint, fstype, source} of the filesystem that holds path (the longest mount prefix)."""
    path = os.path.realpath(path)
    best: Dict[str, str] = {}
    with open(mountinfo) as fh:
        for line in fh:
            fields = line.split()
            sep = fields.index("-")
            point = fields[4].replace("\\040", " ")
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best.get("mountpoint", "")):
                best = {"mountpoint": point, "fstype": fields[sep + 1], "source": fields[sep + 2]}
    return best


def check_freezable(queue_dir: str, backup_dir: str) -> Dict[str, str]:
    """The queue directory's own XFS volume, which may be frozen; the backup must live elsewhere."""
    mount = mount_of(queue_dir)
    if mount.get("mountpoint") != os.path.realpath(queue_dir) or mount.get("fstype") != "xfs":
        raise BackupError("queue directory %s is not the mountpoint of an XFS volume (it is on %s, %s): durable-mx "
                          "freezes only a queue's own volume, never the filesystem around it"
                          % (queue_dir, mount.get("mountpoint"), mount.get("fstype")))
    if os.stat(backup_dir).st_dev == os.stat(queue_dir).st_dev:
        raise BackupError("backup directory %s is on the queue volume %s: writing there while it is frozen would "
                          "hang; choose a directory on another filesystem" % (backup_dir, queue_dir))
    return mount


def queue_members(queue_dir: str) -> List[str]:
    return [name for name in QUEUE_TREES if os.path.isdir(os.path.join(queue_dir, name))]


def _run(cmd: List[str], runner: Callable[..., Any], timeout: Optional[float] = None) -> Any:
    return runner(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False,
                  timeout=timeout)


def frozen_tar(mountpoint: str, queue_dir: str, members: List[str], stage: str, timeout: float,
               runner: Callable[..., Any] = subprocess.run, clock: Callable[[], float] = time.monotonic) -> Dict[str, float]:
    """Freeze the queue volume, tar the queue trees to stage (another filesystem), thaw.

    Why this and not `tar -czf` under the freeze: compression and hashing cost CPU, not
    consistency, so they run after the thaw on the staged plain tar; the freeze lasts only as
    long as reading the files into a write on the root disk's page cache takes. The freeze is
    bounded three ways: tar is killed after `timeout` seconds, the thaw runs in `finally`, and a
    transient systemd timer thaws the volume `timeout + 10` seconds after the freeze even if this
    process dies (killed run, lost connection). Returns freeze_seconds and tar_seconds.
    """
    watchdog = "durable-mx-backup-thaw-%d" % os.getpid()
    armed = _run(["systemd-run", "--quiet", "--collect", "--unit", watchdog, "--on-active=%ds" % (int(timeout) + 10),
                  "--timer-property=AccuracySec=1s", XFS_FREEZE, "-u", mountpoint], runner)
    if armed.returncode != 0:
        raise BackupError("could not arm the thaw watchdog (systemd-run): %s; the volume was not frozen"
                          % armed.stderr.strip())
    try:
        start = clock()
        frozen = _run([XFS_FREEZE, "-f", mountpoint], runner)
        if frozen.returncode != 0:
            raise BackupError("xfs_freeze -f %s failed: %s" % (mountpoint, frozen.stderr.strip()))
        try:
            tar_start = clock()
            try:
                tar = _run(["tar", "-C", queue_dir, "-cf", stage, "--"] + members, runner, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise BackupError("reading the queue took longer than the freeze limit of %ss; tar was stopped and "
                                  "the volume thawed. Raise the limit (runbook_backup_freeze_timeout) only if smtpd "
                                  "may wait that long for its fsync" % timeout)
            tar_seconds = clock() - tar_start
            # tar exits 1 when a file changed while it read it: impossible on a frozen volume, so any
            # non-zero exit is a failure.
            if tar.returncode != 0:
                raise BackupError("tar of %s failed (rc=%d): %s" % (queue_dir, tar.returncode, tar.stderr.strip()[-400:]))
        finally:
            thaw = _run([XFS_FREEZE, "-u", mountpoint], runner)
            freeze_seconds = clock() - start
            if thaw.returncode != 0:
                raise BackupError("xfs_freeze -u %s failed: %s. The volume may still be frozen: run "
                                  "`xfs_freeze -u %s` now" % (mountpoint, thaw.stderr.strip(), mountpoint))
    finally:
        _run(["systemctl", "stop", watchdog + ".timer"], runner)
    return {"freeze_seconds": round(freeze_seconds, 4), "tar_seconds": round(tar_seconds, 4)}


def check_member(member: tarfile.TarInfo, tops: Iterable[str], links: bool = False) -> None:
    """Refuse anything an archive should not hold: absolute names, .., devices; symlinks unless links.

    A queue holds no symlinks; a configuration directory may (Debian's makedefs.out points into
    /usr/share/postfix): they are restored as links, never followed.
    """
    parts = member.name.split("/")
    if member.name.startswith("/") or ".." in parts or parts[0] not in tops:
        raise BackupError("archive member %r is outside %s" % (member.name, ", ".join(sorted(tops))))
    if not (member.isreg() or member.isdir() or (links and member.issym())):
        raise BackupError("archive member %r is not a regular file or directory%s"
                          % (member.name, " or symlink" if links else ""))


def config_tops(manifest: Dict[str, Any]) -> set:
    return {path.lstrip("/").split("/", 1)[0] for path in manifest["config"]["paths"]}


def queue_inventory(tar_path: str) -> Dict[str, Any]:
    """files, bytes, messages and queue_ids per message queue of a queue archive (members checked)."""
    ids: Dict[str, List[str]] = {}
    files = size = 0
    with tarfile.open(tar_path, "r:*") as tar:
        for member in tar:
            check_member(member, QUEUE_TREES)
            if not member.isreg():
                continue
            files += 1
            size += member.size
            queue, name = member.name.split("/", 1)[0], member.name.rsplit("/", 1)[-1]
            if queue in MESSAGE_QUEUES and is_queue_id(name):
                ids.setdefault(queue, []).append(name)
    return {"files": files, "bytes": size, "messages": sum(len(v) for v in ids.values()),
            "queue_ids": {q: sorted(v) for q, v in sorted(ids.items())}}


def gzip_file(src: str, dst: str) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as out:
            shutil.copyfileobj(fin, out, CHUNK)
        raw.flush()
        os.fsync(raw.fileno())


def config_archive(paths: Iterable[str], dst: str) -> Dict[str, Any]:
    """tar.gz of the existing paths, stored relative to / (etc/postfix/main.cf)."""
    kept = [p for p in paths if os.path.lexists(p)]
    with open(dst, "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w:gz") as tar:
            for path in kept:
                tar.add(path, arcname=os.path.abspath(path).lstrip("/"))
        raw.flush()
        os.fsync(raw.fileno())
    with tarfile.open(dst, "r:gz") as tar:
        files = sum(1 for m in tar if m.isreg())
    return {"paths": kept, "files": files}


def load_manifest(backup_dir: str, instance: str) -> Dict[str, Any]:
    path = os.path.join(backup_dir, "%s.manifest.json" % instance)
    if not os.path.isfile(path):
        found = sorted(n[:-len(".manifest.json")] for n in os.listdir(backup_dir) if n.endswith(".manifest.json")) \
            if os.path.isdir(backup_dir) else []
        raise BackupError("no manifest for instance %s in %s (it has: %s)"
                          % (instance, backup_dir, ", ".join(found) or "no backup at all"))
    with open(path) as fh:
        manifest = json.load(fh)
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("instance") != instance:
        raise BackupError("%s is not a format-%d manifest of instance %s" % (path, MANIFEST_FORMAT, instance))
    return manifest


def verify_backup(backup_dir: str, manifest: Dict[str, Any], parts: Iterable[str]) -> List[str]:
    """Problems of the archives (sha256, then queue content) against the manifest; [] when sound."""
    problems = []
    for part in parts:
        entry = manifest[part]
        path = os.path.join(backup_dir, entry["file"])
        if os.path.basename(entry["file"]) != entry["file"] or not os.path.isfile(path):
            problems.append("%s archive %s is missing" % (part, path))
            continue
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            problems.append("%s archive %s has sha256 %s, the manifest says %s" % (part, path, actual, entry["sha256"]))
            continue
        if part == "queue":
            try:
                inventory = queue_inventory(path)
            except (BackupError, tarfile.TarError, OSError) as exc:
                problems.append("queue archive %s: %s" % (path, exc))
                continue
            if inventory["queue_ids"] != entry["queue_ids"]:
                problems.append("queue archive %s holds other queue IDs than the manifest lists" % path)
        else:
            try:
                with tarfile.open(path, "r:gz") as tar:
                    for member in tar:
                        check_member(member, config_tops(manifest), links=True)
            except (BackupError, tarfile.TarError, OSError) as exc:
                problems.append("config archive %s: %s" % (path, exc))
    return problems


def move_aside(queue_dir: str, aside: str) -> List[str]:
    """Rename the queue trees into aside (same volume: a rename, never a copy, nothing deleted)."""
    os.makedirs(aside, mode=0o700)
    if os.stat(aside).st_dev != os.stat(queue_dir).st_dev:
        os.rmdir(aside)
        raise BackupError("%s is not on the queue volume of %s: moving the queue there would be a copy" % (aside, queue_dir))
    moved = []
    for name in queue_members(queue_dir):
        os.rename(os.path.join(queue_dir, name), os.path.join(aside, name))
        moved.append(name)
    fsync_path(aside)
    fsync_path(queue_dir)
    return moved


def tree_ids(root: str) -> Dict[str, List[str]]:
    """Queue IDs per message queue under a queue directory (or a moved-aside copy of one)."""
    ids: Dict[str, List[str]] = {}
    for queue in MESSAGE_QUEUES:
        for _dir, _subdirs, names in os.walk(os.path.join(root, queue)):
            ids.setdefault(queue, []).extend(n for n in names if is_queue_id(n))
    return {q: sorted(v) for q, v in sorted(ids.items()) if v}
