"""Integrity scan on temporary copies of the captured queue."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import postfix_queue as pq
from conftest import ROOT, file_mode

SCRIPT = ROOT / "roles" / "postfix" / "files" / "durable-mx-queue-integrity"
VICTIM = "deferred/7/4jcN493RPvzD04F"


def scan(spool: Path, **kwargs):
    kwargs.setdefault("owner_uid", os.getuid())
    kwargs.setdefault("postdrop_gid", os.getgid())
    kwargs.setdefault("quarantine_dir", str(spool.parent / "quarantine"))
    return pq.integrity_scan(str(spool), now=1795899751, **kwargs)


def tree(spool: Path):
    return sorted(str(p.relative_to(spool)) for p in spool.rglob("*") if p.is_file())


def test_clean_queue_gives_clean_report_and_changes_nothing(spool):
    before = tree(spool)
    for _ in range(2):
        report = scan(spool)
        assert report["clean"], report
        assert report["scanned"] == 17 and report["quarantined"] == 0
    assert tree(spool) == before
    # Nothing moved: the quarantine holds only the record of files found sound.
    assert [p.name for p in (spool.parent / "quarantine").iterdir()] == [pq.VERIFIED_FILE]
    json.dumps(report)


def test_second_scan_skips_record_walks_of_unchanged_files_only(spool):
    first = scan(spool)
    assert first["full"] and first["unchanged_since_last_scan"] == 0
    second = scan(spool)
    assert not second["full"] and second["unchanged_since_last_scan"] == 17
    # Truncated after the last scan: its ctime and size changed, so it is walked again and caught.
    victim = spool / VICTIM
    victim.write_bytes(victim.read_bytes()[:-40])
    third = scan(spool, dry_run=True)
    assert third["unchanged_since_last_scan"] == 16
    assert [s["reason"] for s in third["suspects"]] == ["truncated"]


def test_same_size_rewrite_is_walked_again(spool):
    scan(spool)
    victim = spool / VICTIM
    data = bytearray(victim.read_bytes())
    data[-2] = ord("Z")  # the END record (E, length 0) becomes an unknown type, same size
    victim.write_bytes(bytes(data))
    report = scan(spool, dry_run=True)
    assert [s["reason"] for s in report["suspects"]] == ["unknown-record"]


def test_full_scan_and_unreadable_record_ignore_previous_results(spool):
    scan(spool)
    assert scan(spool, full=True)["unchanged_since_last_scan"] == 0
    (spool.parent / "quarantine" / pq.VERIFIED_FILE).write_bytes(b"not marshal")
    report = scan(spool)
    assert report["full"] and report["clean"] and report["unchanged_since_last_scan"] == 0


def test_dry_run_writes_no_record(spool):
    scan(spool, dry_run=True)
    assert not (spool.parent / "quarantine").exists()


def test_suspects_are_quarantined_with_labels_never_deleted(spool):
    victim = spool / VICTIM
    original = victim.read_bytes()
    victim.write_bytes(original[:-100])  # truncated: no END record
    (spool / "hold/4jcN493JzwzD049").write_bytes(b"")  # zero-length
    incoming = spool / "incoming/4jcN5J3NpLzCycR"
    data = incoming.read_bytes()
    incoming.write_bytes(data[:-2] + b"Q\x00")  # unknown record type
    (spool / "incoming/123456.789").write_bytes(b"C\x00")  # orphaned temp file
    half = spool / "deferred/6/4jcN492rMTzD03w"
    half.chmod(0o600)  # never completed
    report = scan(spool)
    reasons = {Path(s["path"]).name: s["reason"] for s in report["suspects"]}
    assert reasons == {"4jcN493RPvzD04F": "truncated", "4jcN493JzwzD049": "zero-length",
                       "4jcN5J3NpLzCycR": "unknown-record", "123456.789": "temp-orphan",
                       "4jcN492rMTzD03w": "not-ready"}
    assert report["quarantined"] == 5 and not report["clean"]
    for item in report["suspects"]:
        moved = Path(item["quarantined_to"])
        assert moved.exists() and not Path(item["path"]).exists()
        label = json.loads(Path(str(moved) + ".label.json").read_text())
        assert label["reason"] == item["reason"] and label["original_path"] == item["path"]
        assert label["quarantined_at"] == "2026-11-28T21:02:31Z"
    kept = Path(next(s["quarantined_to"] for s in report["suspects"] if s["reason"] == "truncated"))
    assert kept.read_bytes() == original[:-100]
    assert kept.relative_to(spool.parent / "quarantine").parts[1:] == Path(VICTIM).parts
    again = scan(spool)
    assert again["clean"] and again["quarantined"] == 0


def test_dry_run_moves_nothing(spool):
    (spool / VICTIM).write_bytes((spool / VICTIM).read_bytes()[:50])
    before = tree(spool)
    report = scan(spool, dry_run=True)
    assert [s["action"] for s in report["suspects"]] == ["would quarantine"]
    assert tree(spool) == before and not (spool.parent / "quarantine").exists()


def test_wrong_hash_dir_is_left_for_postsuper_unless_asked(spool):
    wrong = spool / "deferred/F"
    wrong.mkdir()
    (spool / VICTIM).rename(wrong / "4jcN493RPvzD04F")
    report = scan(spool)
    assert [m["reason"] for m in report["misplaced"]] == ["misplaced"]
    assert "deferred/7" in report["misplaced"][0]["detail"]
    assert (wrong / "4jcN493RPvzD04F").exists() and report["quarantined"] == 0
    report = scan(spool, quarantine_misplaced=True)
    assert [s["reason"] for s in report["suspects"]] == ["misplaced"] and report["quarantined"] == 1


def test_owner_and_mode_checks(spool):
    odd = spool / "hold/4jcN4t3zgczCyc2"
    odd.chmod(0o707)
    report = scan(spool, owner_uid=os.getuid() + 1)
    by_name = {Path(s["path"]).name: s["reason"] for s in report["suspects"]}
    assert by_name["4jcN4t3zgczCyc2"] == "bad-mode"
    assert by_name["4jcN492xSVzD03t"] == "bad-owner"
    assert "4jcN5R4qnqzCycV" not in by_name  # maildrop: any owner, group checked
    assert file_mode(Path(report["suspects"][0]["quarantined_to"])) in (0o700, 0o707)


def test_maildrop_group_is_checked(spool):
    report = scan(spool, postdrop_gid=os.getgid() + 1)
    assert {s["queue"] for s in report["suspects"]} == {"maildrop"}
    assert {s["reason"] for s in report["suspects"]} == {"bad-owner"}


def test_default_quarantine_is_beside_the_queue_on_the_same_filesystem(spool):
    assert pq.default_quarantine_dir(str(spool)) == str(spool.parent / "durable-mx-quarantine")


def test_quarantine_on_another_filesystem_is_refused(spool):
    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == spool.stat().st_dev:
        pytest.skip("no second filesystem to test with")
    with pytest.raises(ValueError, match="not on the filesystem"):
        scan(spool, quarantine_dir=str(other / "dmx-q"))


def _run_script(spool: Path, tmp_path: Path, *args):
    """Run the command with a stand-in postconf that describes the copied queue."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "postconf"
    user = subprocess.run(["id", "-un"], stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()
    group = subprocess.run(["id", "-gn"], stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()
    fake.write_text("#!/bin/sh\nprintf '%%s\\n' '%s' 'deferred, defer' 1 '%s' '%s'\n" % (spool, user, group))
    fake.chmod(0o755)
    env = dict(os.environ, PATH="%s:%s" % (bin_dir, os.environ["PATH"]), DMX_LIB=str(ROOT / "plugins/module_utils"))
    return subprocess.run([sys.executable, str(SCRIPT), "--quarantine", str(tmp_path / "q")] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=env)


def test_command_reports_clean_queue(spool, tmp_path):
    proc = _run_script(spool, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["clean"] is True


def test_command_quarantines_and_exits_zero(spool, tmp_path):
    (spool / VICTIM).write_bytes(b"")
    dry = _run_script(spool, tmp_path, "--dry-run")
    assert dry.returncode == 0 and (spool / VICTIM).exists()
    proc = _run_script(spool, tmp_path)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["quarantined"] == 1 and not (spool / VICTIM).exists()


def test_command_fails_on_internal_error(spool, tmp_path):
    proc = _run_script(spool, tmp_path, "--queue-dir", str(tmp_path / "missing"))
    assert proc.returncode == 1 and "error" in json.loads(proc.stdout)


def test_chmod_after_a_clean_scan_is_caught(spool):
    scan(spool)
    (spool / VICTIM).chmod(0o707)  # sets ctime: the file is checked again
    report = scan(spool, dry_run=True)
    assert [s["reason"] for s in report["suspects"]] == ["bad-mode"]


def test_other_settings_void_earlier_verdicts(spool):
    scan(spool)
    assert scan(spool)["unchanged_since_last_scan"] == 17
    report = scan(spool, owner_uid=os.getuid() + 1, dry_run=True)
    assert report["full"] and report["unchanged_since_last_scan"] == 0
    assert {s["reason"] for s in report["suspects"]} == {"bad-owner"}


def test_misplaced_files_are_reported_on_every_run(spool):
    scan(spool)
    for _ in range(2):
        report = scan(spool, hash_queue_depth=2)
        assert report["misplaced"] and not report["suspects"]


# --- seals: a clean stop lets the next start skip the walk ---------------------------------------
# The fixture queue is not an XFS mountpoint, so volume_fingerprint() (bulk stat) is replaced by
# the same digest built from lstat(): every file's and directory's verified_key().

def _lstat_fingerprint(queue_dir: str) -> str:
    keys = sorted(pq.verified_key(pq.file_stat(os.lstat(p))) for p in [queue_dir, *map(str, Path(queue_dir).rglob("*"))])
    return "%d:%s" % (len(keys), hash(tuple(keys)))


@pytest.fixture
def seals(tmp_path, monkeypatch):
    monkeypatch.setattr(pq, "volume_fingerprint", _lstat_fingerprint)
    return tmp_path / "seals"


def test_clean_stop_seals_and_the_next_start_skips_the_walk(spool, seals, monkeypatch):
    scan(spool)  # the start-up before: the record of sound files
    before = tree(spool)
    stop = scan(spool, seal_dir=str(seals), seal=True)
    assert stop["clean"] and stop["seal"] == "written" and tree(spool) == before
    walked = []
    monkeypatch.setattr(pq, "_scan", lambda *a, **k: walked.append(a) or {})
    start = scan(spool, seal_dir=str(seals))
    assert start["seal"] == "matched" and start["clean"] and start["scanned"] == 17 and not walked
    assert not list(seals.iterdir()), "a seal is used once"


def test_a_change_after_the_seal_is_caught_at_start(spool, seals):
    scan(spool, seal_dir=str(seals), seal=True)
    victim = spool / VICTIM
    victim.write_bytes(victim.read_bytes()[:-40])
    start = scan(spool, seal_dir=str(seals))
    assert start["seal"] == "stale" and [s["reason"] for s in start["suspects"]] == ["truncated"]
    assert not victim.exists() and start["quarantined"] == 1


def test_a_start_without_a_seal_scans(spool, seals):
    report = scan(spool, seal_dir=str(seals))
    assert report["seal"] == "absent" and report["scanned"] == 17


def test_no_seal_for_a_queue_with_suspects_and_nothing_moved_at_stop(spool, seals):
    (spool / VICTIM).write_bytes(b"")
    stop = scan(spool, seal_dir=str(seals), seal=True)
    assert stop["seal"] == "not written" and stop["suspects"][0]["action"] == "would quarantine"
    assert (spool / VICTIM).exists() and not seals.exists()
    start = scan(spool, seal_dir=str(seals))
    assert start["seal"] == "absent" and start["quarantined"] == 1


def test_no_seal_when_the_volume_changed_during_the_stop_scan(spool, seals, monkeypatch):
    prints = iter(["1:a", "2:b"])
    monkeypatch.setattr(pq, "volume_fingerprint", lambda _q: next(prints))
    assert scan(spool, seal_dir=str(seals), seal=True)["seal"] == "not written"
    assert not seals.exists()


def test_other_settings_or_a_full_scan_ignore_the_seal(spool, seals):
    scan(spool, seal_dir=str(seals), seal=True)
    assert scan(spool, seal_dir=str(seals), hash_queue_depth=2)["seal"] == "stale"
    scan(spool, seal_dir=str(seals), seal=True)
    full = scan(spool, seal_dir=str(seals), full=True)
    assert full["seal"] == "stale" and full["full"] and full["unchanged_since_last_scan"] == 0


def test_no_fingerprint_off_a_mountpoint(spool):
    assert pq.volume_fingerprint(str(spool)) is None


def test_command_seals_on_stop(spool, tmp_path):
    proc = _run_script(spool, tmp_path, "--seal", "--seal-dir", str(tmp_path / "seals"))
    assert proc.returncode == 0, proc.stderr
    # Off a mountpoint there is no fingerprint, so no seal: the next start scans.
    assert json.loads(proc.stdout)["seal"] == "not written" and not (tmp_path / "seals").exists()
