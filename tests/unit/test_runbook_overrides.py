"""Runbook route overrides (plugins/module_utils/runbook_overrides.py): data, map, validation, expiry.

Postfix is not on the test machine: a fake runner answers postconf, postmap and systemctl the way
they answer on a node (postmap -q - prints `key<TAB>value` per found key, reading texthash as
Postfix does: `key whitespace value`, # comments and blank lines skipped).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import runbook_overrides as ro

SERVICES = "smtp       inet  n - y - - smtpd\nsmtp       unix  - - y - - smtp\nrelay      unix  - - y - - smtp\n" \
           "retry      unix  - - y - - error\ndmx_throttle_slow unix - - y - - smtp\n"


class FakePostfix:
    def __init__(self, multi_instance_name: str = "", postmap_stderr: str = "", transport_maps: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.transport_maps = transport_maps
        self.multi_instance_name = multi_instance_name
        self.postmap_stderr = postmap_stderr

    def __call__(self, cmd, input=None, **_kw):
        self.calls.append(list(cmd))
        out, err, rc = "", "", 0
        if cmd[0] == "postconf" and cmd[-1] == "-M":
            out = SERVICES
        elif cmd[0] == "postconf" and cmd[-1] == "transport_maps":
            config_dir = cmd[cmd.index("-c") + 1]
            out = self.transport_maps if self.transport_maps is not None else \
                "texthash:%s/%s, texthash:%s/transport\n" % (config_dir, ro.MAP_NAME, config_dir)
        elif cmd[0] == "postconf" and cmd[-1] == "multi_instance_name":
            out = self.multi_instance_name + "\n"
        elif cmd[0] == "postconf" and cmd[-2:] == ["config_directory", "multi_instance_directories"]:
            out = "/etc/postfix\n/etc/postfix-bulk /etc/postfix-tx\n"
        elif cmd[0] == "postmap":
            table = {}
            for line in Path(cmd[-1].split(":", 1)[1]).read_text().splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    key, value = line.split(None, 1)
                    table[key] = value.strip()
            found = [k for k in input.split() if k in table]
            out = "".join("%s\t%s\n" % (k, table[k]) for k in found)
            err, rc = self.postmap_stderr, 0 if found else 1
        elif cmd[0] == "systemctl":
            pass
        else:  # pragma: no cover - a command the code should not run
            raise AssertionError(cmd)
        return subprocess.CompletedProcess(cmd, rc, out, err)


def suspend(domain="example.net", expires_at=None, **kw):
    entry = dict(domain=domain, kind="suspend", transport="retry", nexthop="4.3.2 %s suspended by the durable-mx runbook" % domain,
                 expires_at=expires_at, reason="", set_at=1000, set_by="test")
    entry.update(kw)
    return entry


def test_domains_are_normalised_and_checked():
    assert ro.normalize_domain(" Example.NET. ") == "example.net"
    assert ro.normalize_domain(".Sub.Example.net") == ".sub.example.net"
    for bad in ("", "exa mple.net", "-x.net", "x..net", "*", "a@b.net", "x.net\tsmtp:"):
        with pytest.raises(ro.OverrideError, match="not a domain name"):
            ro.normalize_domain(bad)


def test_entries_are_checked():
    with pytest.raises(ro.OverrideError, match="kind"):
        ro.check_entry(suspend(kind="pause"))
    with pytest.raises(ro.OverrideError, match="master.cf service"):
        ro.check_entry(suspend(transport="smtp:[x]"))
    with pytest.raises(ro.OverrideError, match="nexthop"):
        ro.check_entry(suspend(nexthop="a\nb"))
    with pytest.raises(ro.OverrideError, match="expires_at"):
        ro.check_entry(suspend(expires_at="soon"))


def test_map_lists_each_entry_with_its_comment_sorted_by_domain():
    text = ro.render_map([suspend("b.net", 1764394800, reason="their MX is down"), suspend("a.net")])
    lines = text.splitlines()
    assert lines[-4:] == [
        "# suspend until resumed",
        "a.net\tretry:4.3.2 a.net suspended by the durable-mx runbook",
        "# suspend until 2025-11-29T05:40:00Z: their MX is down",
        "b.net\tretry:4.3.2 b.net suspended by the durable-mx runbook",
    ]
    assert all(line.startswith("#") for line in lines[:-4])
    assert ro.render_map([]) == ro.MAP_HEADER


def test_upsert_is_idempotent_and_keeps_the_first_expiry():
    entries, changed, previous = ro.upsert([], suspend(expires_at=2000))
    assert changed and previous is None
    again, changed, previous = ro.upsert(entries, suspend(expires_at=3000, set_at=1500))
    assert not changed and again == entries and previous["expires_at"] == 2000
    renewed, changed, _ = ro.upsert(entries, suspend(expires_at=3000), renew=True)
    assert changed and renewed[0]["expires_at"] == 3000


def test_another_kind_replaces_the_override_of_that_domain():
    entries, _, _ = ro.upsert([suspend("a.net"), suspend("b.net")], dict(
        domain="A.net", kind="throttle", transport="dmx_throttle_slow", nexthop="[10.0.0.5]:25", expires_at=5000))
    assert [(e["domain"], e["kind"]) for e in entries] == [("a.net", "throttle"), ("b.net", "suspend")]


def test_remove_and_expire():
    entries = [suspend("a.net", 100), suspend("b.net", 300), suspend("c.net")]
    kept, gone = ro.remove(entries, "B.NET")
    assert [e["domain"] for e in gone] == ["b.net"] and len(kept) == 2
    kept, gone = ro.remove(entries, "b.net", kinds=["throttle"])
    assert gone == [] and kept == entries
    kept, due = ro.expire(entries, 200)
    assert [e["domain"] for e in due] == ["a.net"]
    assert [e["domain"] for e in kept] == ["b.net", "c.net"]  # no expiry: stays until resumed


def test_apply_writes_validated_map_and_data_then_reloads_once(tmp_path: Path):
    fake = FakePostfix()
    result = ro.apply(str(tmp_path), [suspend(expires_at=2000)], fake)
    assert result["changed"] and result["reloaded"] == "postfix@-.service"
    assert "example.net\tretry:4.3.2" in (tmp_path / ro.MAP_NAME).read_text()
    data = json.loads((tmp_path / ro.STATE_NAME).read_text())
    assert data["version"] == 1 and data["entries"][0]["expires_at"] == 2000
    assert oct((tmp_path / ro.STATE_NAME).stat().st_mode & 0o777) == "0o600"
    assert ["systemctl", "try-reload-or-restart", "postfix@-.service"] in fake.calls
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no candidate left behind
    # The same entries again: nothing written, nothing reloaded.
    fake.calls.clear()
    again = ro.apply(str(tmp_path), ro.load_entries(str(tmp_path)), fake)
    assert not again["changed"] and fake.calls == []


def test_apply_reloads_the_instance_unit(tmp_path: Path):
    fake = FakePostfix(multi_instance_name="postfix-bulk")
    assert ro.apply(str(tmp_path), [suspend()], fake)["reloaded"] == "postfix@postfix-bulk.service"


def test_apply_refuses_an_unknown_transport_and_leaves_the_live_files(tmp_path: Path):
    fake = FakePostfix()
    ro.apply(str(tmp_path), [suspend()], fake)
    before = (tmp_path / ro.MAP_NAME).read_text()
    bad = dict(domain="x.net", kind="reroute", transport="nosuch", nexthop="[10.0.0.9]:25", expires_at=None)
    with pytest.raises(ro.OverrideError, match="nosuch.*not a unix service"):
        ro.apply(str(tmp_path), [suspend(), bad], fake)
    assert (tmp_path / ro.MAP_NAME).read_text() == before


def test_apply_refuses_a_map_postfix_complains_about(tmp_path: Path):
    with pytest.raises(ro.OverrideError, match="postmap rejected"):
        ro.apply(str(tmp_path), [suspend()], FakePostfix(postmap_stderr="postmap: warning: bad line"))
    assert not (tmp_path / ro.MAP_NAME).exists() and not (tmp_path / ro.STATE_NAME).exists()


def test_expire_due_lifts_only_what_is_due(tmp_path: Path):
    fake = FakePostfix()
    ro.apply(str(tmp_path), [suspend("a.net", 100), suspend("b.net", 10_000)], fake)
    assert ro.expire_due(str(tmp_path), 50, fake) == []
    due = ro.expire_due(str(tmp_path), 200, fake)
    assert [e["domain"] for e in due] == ["a.net"]
    text = (tmp_path / ro.MAP_NAME).read_text()
    assert "a.net" not in text and "b.net\tretry:" in text
    assert ro.expire_due(str(tmp_path / "nothing-here"), 200, fake) == []


def test_main_expire_walks_the_given_directories(tmp_path: Path, capsys, monkeypatch):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    fake = FakePostfix()
    ro.apply(str(one), [suspend("a.net", 100)], fake)
    (two / ro.STATE_NAME).write_text("not json")
    monkeypatch.setattr(ro.subprocess, "run", fake)
    assert ro.main_expire([str(one), str(two)]) == 1  # the broken one is reported, the other still expired
    out, err = capsys.readouterr()
    assert "override of a.net expired" in out and "not valid JSON" in err
    assert ro.load_entries(str(one)) == []


def test_config_dirs_lists_the_primary_and_every_instance():
    assert ro.config_dirs(FakePostfix()) == ["/etc/postfix", "/etc/postfix-bulk", "/etc/postfix-tx"]


def test_apply_refuses_when_main_cf_does_not_list_the_map_first(tmp_path: Path):
    fake = FakePostfix(transport_maps="texthash:%s/transport\n" % tmp_path)
    with pytest.raises(ro.OverrideError, match="does not list .* first in transport_maps"):
        ro.apply(str(tmp_path), [suspend()], fake)
    assert not (tmp_path / ro.MAP_NAME).exists()
    # Emptying the map is always allowed (nothing to honour).
    assert ro.apply(str(tmp_path), [], fake)["changed"]  # writes the empty map, no check needed


def test_changes_are_serialised_by_a_lock_in_the_config_dir(tmp_path: Path):
    import fcntl
    import os

    with ro.locked(str(tmp_path)):
        fd = os.open(tmp_path / ro.LOCK_NAME, os.O_RDWR)
        with pytest.raises(BlockingIOError):  # a second holder (the expiry timer) must wait
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
    assert oct((tmp_path / ro.LOCK_NAME).stat().st_mode & 0o777) == "0o600"
