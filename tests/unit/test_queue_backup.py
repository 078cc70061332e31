"""Backups of a queue (module_utils/queue_backup.py): the freeze is always undone, archives are
checked against their manifest, and nothing outside the queue trees is ever extracted."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest
import queue_backup as qb
from conftest import FIXTURES, install_spool


def _tar_of(spool: Path, dst: Path) -> Path:
    with tarfile.open(dst, "w") as tar:
        for name in qb.queue_members(str(spool)):
            tar.add(spool / name, arcname=name)
    return dst


def _ids(spool: Path) -> dict:
    out: dict = {}
    for queue in ("deferred", "hold"):
        out[queue] = sorted(p.name for p in (spool / queue).rglob("*") if p.is_file())
    return {q: v for q, v in out.items() if v}


def test_inventory_lists_every_queue_id_by_queue(tmp_path: Path) -> None:
    spool = install_spool(FIXTURES / "spool-depth2", tmp_path / "spool")
    inventory = qb.queue_inventory(str(_tar_of(spool, tmp_path / "q.tar")))
    assert inventory["queue_ids"] == _ids(spool)
    assert inventory["messages"] == sum(len(v) for v in _ids(spool).values()) > 0
    files = [p for p in spool.rglob("*") if p.is_file()]
    assert inventory["files"] == len(files) and inventory["bytes"] == sum(p.stat().st_size for p in files)
    assert qb.tree_ids(str(spool)) == _ids(spool)


@pytest.mark.parametrize("name, kind, link", [
    ("../etc/passwd", tarfile.REGTYPE, ""),
    ("/deferred/x", tarfile.REGTYPE, ""),
    ("etc/shadow", tarfile.REGTYPE, ""),
    ("deferred/dev", tarfile.CHRTYPE, ""),
    ("deferred/link", tarfile.SYMTYPE, "../x"),
])
def test_members_outside_the_queue_trees_are_refused(tmp_path: Path, name: str, kind: bytes, link: str) -> None:
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, link
        tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    with pytest.raises(qb.BackupError, match="archive member"):
        qb.queue_inventory(str(path))


def _backup(tmp_path: Path) -> tuple[Path, dict]:
    spool = install_spool(FIXTURES / "spool-depth2", tmp_path / "spool")
    backup = tmp_path / "ID"
    backup.mkdir()
    stage = _tar_of(spool, tmp_path / "stage.tar")
    queue = qb.queue_inventory(str(stage))
    qb.gzip_file(str(stage), str(backup / "postfix.queue.tar.gz"))
    queue.update(file="postfix.queue.tar.gz", sha256=qb.sha256_file(str(backup / "postfix.queue.tar.gz")))
    manifest = {"format": qb.MANIFEST_FORMAT, "instance": "postfix", "queue": queue}
    qb.write_json_atomic(str(backup / "postfix.manifest.json"), manifest)
    return backup, manifest


def test_a_sound_backup_verifies(tmp_path: Path) -> None:
    backup, _ = _backup(tmp_path)
    manifest = qb.load_manifest(str(backup), "postfix")
    assert qb.verify_backup(str(backup), manifest, ["queue"]) == []


def test_a_changed_archive_or_manifest_is_refused(tmp_path: Path) -> None:
    backup, manifest = _backup(tmp_path)
    archive = backup / "postfix.queue.tar.gz"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    problems = qb.verify_backup(str(backup), manifest, ["queue"])
    assert len(problems) == 1 and "sha256" in problems[0]
    # A manifest that lists other IDs than the archive holds (right sha256) is refused too.
    backup2, manifest2 = _backup(tmp_path / "two")
    manifest2["queue"]["queue_ids"]["deferred"] = manifest2["queue"]["queue_ids"]["deferred"][1:]
    assert "other queue IDs" in qb.verify_backup(str(backup2), manifest2, ["queue"])[0]


def test_a_missing_manifest_names_the_instances_there(tmp_path: Path) -> None:
    backup, _ = _backup(tmp_path)
    with pytest.raises(qb.BackupError, match=r"no manifest for instance postfix-bulk .*it has: postfix"):
        qb.load_manifest(str(backup), "postfix-bulk")


class Runner:
    """Records commands; fails or times out the ones it is told to."""

    def __init__(self, fail: str = "", timeout: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.fail, self.timeout = fail, timeout

    def __call__(self, cmd, timeout=None, **_kwargs):
        self.calls.append(cmd)
        if cmd[0] == "tar" and self.timeout:
            raise subprocess.TimeoutExpired(cmd, timeout)
        failed = self.fail and self.fail in " ".join(cmd)
        return subprocess.CompletedProcess(cmd, 2 if failed else 0, "", "boom" if failed else "")

    def names(self) -> list[str]:
        return [" ".join(c[:2]) if c[0] != qb.XFS_FREEZE else "freeze " + c[1] for c in self.calls]


@pytest.mark.parametrize("runner, error", [
    (Runner(), None),
    (Runner(fail="tar"), "tar of"),
    (Runner(timeout=True), "freeze limit of 5s"),
])
def test_the_volume_is_always_thawed_and_the_watchdog_disarmed(runner: Runner, error: str | None) -> None:
    ticks = iter(range(100))
    if error:
        with pytest.raises(qb.BackupError, match=error):
            qb.frozen_tar("/q", "/q", ["deferred"], "/b/s.tar", 5, runner=runner, clock=lambda: next(ticks))
    else:
        timing = qb.frozen_tar("/q", "/q", ["deferred"], "/b/s.tar", 5, runner=runner, clock=lambda: next(ticks))
        assert timing == {"freeze_seconds": 3, "tar_seconds": 1}
    assert runner.names() == ["systemd-run --quiet", "freeze -f", "tar -C", "freeze -u", "systemctl stop"]
    assert "--on-active=15s" in runner.calls[0]


def test_no_freeze_without_a_watchdog_and_no_tar_without_a_freeze() -> None:
    runner = Runner(fail="systemd-run")
    with pytest.raises(qb.BackupError, match="watchdog"):
        qb.frozen_tar("/q", "/q", ["deferred"], "/b/s.tar", 5, runner=runner)
    assert runner.names() == ["systemd-run --quiet"]
    runner = Runner(fail=" -f ")
    with pytest.raises(qb.BackupError, match="xfs_freeze -f"):
        qb.frozen_tar("/q", "/q", ["deferred"], "/b/s.tar", 5, runner=runner)
    assert runner.names() == ["systemd-run --quiet", "freeze -f", "systemctl stop"]


def test_mount_of_picks_the_longest_prefix(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 0:21 / / rw - overlay overlay rw\n"
        "30 22 7:3 / /var/spool/postfix rw,noatime - xfs /dev/vdb rw\n"
        "31 22 7:4 / /var/spool/postfix-bulk rw - xfs /dev/vdc rw\n")
    assert qb.mount_of("/var/spool/postfix", str(mountinfo)) == {"mountpoint": "/var/spool/postfix", "fstype": "xfs",
                                                                 "source": "/dev/vdb"}
    assert qb.mount_of("/var/spool/postfix/deferred", str(mountinfo))["source"] == "/dev/vdb"
    assert qb.mount_of("/var/backups", str(mountinfo))["mountpoint"] == "/"


def test_move_aside_renames_every_queue_tree(tmp_path: Path) -> None:
    spool = install_spool(FIXTURES / "spool-depth2", tmp_path / "spool")
    before = _ids(spool)
    (spool / "pid").mkdir()
    moved = qb.move_aside(str(spool), str(spool / "durable-mx-restore-aside" / "T"))
    assert set(moved) >= {"deferred", "hold", "defer"} and "pid" not in moved
    assert qb.tree_ids(str(spool)) == {} and qb.tree_ids(str(spool / "durable-mx-restore-aside" / "T")) == before
    assert (spool / "pid").is_dir()


def test_config_archives_keep_their_links_but_nothing_outside_their_paths(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "postfix"
    conf.mkdir(parents=True)
    (conf / "main.cf").write_text("myhostname = mx1\n")
    (conf / "makedefs.out").symlink_to("/usr/share/postfix/makedefs.out")  # as Debian ships it
    backup = tmp_path / "ID"
    backup.mkdir()
    config = qb.config_archive([str(conf), str(tmp_path / "missing")], str(backup / "postfix.config.tar.gz"))
    assert config == {"paths": [str(conf)], "files": 1}
    config.update(file="postfix.config.tar.gz", sha256=qb.sha256_file(str(backup / "postfix.config.tar.gz")))
    manifest = {"format": qb.MANIFEST_FORMAT, "instance": "postfix", "config": config}
    assert qb.verify_backup(str(backup), manifest, ["config"]) == []
    # The same archive checked against other paths (a forged manifest) is refused.
    manifest["config"] = dict(config, paths=["/srv/other"])
    assert "outside srv" in qb.verify_backup(str(backup), manifest, ["config"])[0]
