# -*- coding: utf-8 -*-
# Copyright: durable-mx contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runbook route overrides of one Postfix instance: data, rendering, validation, expiry.

Standard library only: the Ansible module postfix_transport_override imports it on the
controller side, and the node's expiry command (durable-mx-runbook-expire, run by a systemd
timer) imports the copy the runbook role installs in /usr/local/lib/durable-mx/.

The data (STATE_NAME, JSON) lives in the instance's configuration directory and is the only
source of the map (MAP_NAME, texthash), which main.cf lists first in transport_maps (role
postfix). A converge of site.yml never writes either file, so an active override survives it;
only the runbooks and the expiry command change them.

Entry: {"domain", "kind" (suspend | throttle | reroute), "transport", "nexthop",
        "expires_at" (Unix time or null), "reason", "set_at", "set_by"}
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

STATE_NAME = "durable-mx-runbook.json"
LOCK_NAME = ".durable-mx-runbook.lock"
MAP_NAME = "durable-mx-runbook-transport"
KINDS = ("suspend", "throttle", "reroute")
STATE_VERSION = 1

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_RE = re.compile(r"^\.?%s(?:\.%s)*$" % (_LABEL, _LABEL))
_TRANSPORT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NEXTHOP_BAD = re.compile(r"[\r\n\t]")
MAP_HEADER = (
    "# durable-mx runbook overrides of this instance's routes. Do not edit: rendered by the\n"
    "# runbooks (playbooks/runbooks/) and by durable-mx-runbook-expire from %s.\n"
    "# main.cf lists this map before the role's transport map, so an entry here wins.\n" % STATE_NAME
)

Runner = Callable[..., Any]


class OverrideError(ValueError):
    """A value that cannot go into the map, with what would be right."""


def normalize_domain(domain: str) -> str:
    """Lower-case domain; a leading dot (.example.com) means its subdomains (transport(5))."""
    value = (domain or "").strip().lower().rstrip(".")
    if not value or not _DOMAIN_RE.match(value):
        raise OverrideError("domain %r is not a domain name (example.net, or .example.net for its subdomains)" % domain)
    return value


def check_entry(entry: Dict[str, Any]) -> Dict[str, Any]:
    """Validate one entry; returns it with the domain normalised."""
    if entry.get("kind") not in KINDS:
        raise OverrideError("kind %r: must be one of %s" % (entry.get("kind"), ", ".join(KINDS)))
    transport = entry.get("transport") or ""
    if not _TRANSPORT_RE.match(transport):
        raise OverrideError("transport %r is not a master.cf service name" % transport)
    nexthop = entry.get("nexthop") or ""
    if _NEXTHOP_BAD.search(nexthop) or nexthop != nexthop.strip():
        raise OverrideError("nexthop %r: no tabs, newlines or surrounding spaces" % nexthop)
    expires = entry.get("expires_at")
    if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int) or expires <= 0):
        raise OverrideError("expires_at %r: a Unix time or null" % (expires,))
    out = dict(entry)
    out["domain"] = normalize_domain(entry.get("domain", ""))
    out["nexthop"] = nexthop
    out.setdefault("reason", "")
    return out


def state_path(config_dir: str) -> str:
    return os.path.join(config_dir, STATE_NAME)


def map_path(config_dir: str) -> str:
    return os.path.join(config_dir, MAP_NAME)


@contextlib.contextmanager
def locked(config_dir: str) -> Iterator[None]:
    """Serialise changes of one instance's overrides (a runbook and the expiry timer at once)."""
    fd = os.open(os.path.join(config_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def load_entries(config_dir: str) -> List[Dict[str, Any]]:
    """The instance's entries; none when the data file does not exist yet."""
    path = state_path(config_dir)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return []
    except ValueError as exc:
        raise OverrideError("%s is not valid JSON (%s): fix or remove it" % (path, exc))
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise OverrideError("%s has no list 'entries'" % path)
    return sort_entries(check_entry(e) for e in entries)


def sort_entries(entries) -> List[Dict[str, Any]]:
    return sorted(entries, key=lambda e: e["domain"])


def render_state(entries: List[Dict[str, Any]]) -> str:
    return json.dumps({"version": STATE_VERSION, "entries": sort_entries(entries)}, indent=2, sort_keys=True) + "\n"


def iso(ts: Optional[int]) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def map_value(entry: Dict[str, Any]) -> str:
    return "%s:%s" % (entry["transport"], entry["nexthop"])


def render_map(entries: List[Dict[str, Any]]) -> str:
    """The texthash map: a comment per entry (kind, expiry, reason), then `domain<TAB>transport:nexthop`."""
    lines = [MAP_HEADER.rstrip("\n")]
    for e in sort_entries(entries):
        until = e.get("expires_at")
        note = "%s until %s" % (e["kind"], "resumed" if until is None else iso(until))
        if e.get("reason"):
            note += ": " + " ".join(str(e["reason"]).split())
        lines.append("# " + note)
        lines.append("%s\t%s" % (e["domain"], map_value(e)))
    return "\n".join(lines) + "\n"


def same_route(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("kind", "transport", "nexthop"))


def upsert(entries: List[Dict[str, Any]], new: Dict[str, Any], renew: bool = False
           ) -> Tuple[List[Dict[str, Any]], bool, Optional[Dict[str, Any]]]:
    """Set the override of new["domain"]; (entries, changed, previous entry).

    An existing entry with the same kind and route is kept as it is (its expiry too) unless
    renew: running a runbook twice does not push the expiry further. A different one is replaced.
    """
    new = check_entry(new)
    previous = next((e for e in entries if e["domain"] == new["domain"]), None)
    if previous is not None and same_route(previous, new):
        if not renew or previous.get("expires_at") == new.get("expires_at"):
            return sort_entries(entries), False, previous
    kept = [e for e in entries if e["domain"] != new["domain"]]
    return sort_entries(kept + [new]), True, previous


def remove(entries: List[Dict[str, Any]], domain: str, kinds: Optional[List[str]] = None
           ) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Drop the override of one domain (only of these kinds, when given); (entries, removed)."""
    domain = normalize_domain(domain)
    gone = [e for e in entries if e["domain"] == domain and (not kinds or e["kind"] in kinds)]
    return sort_entries(e for e in entries if e not in gone), gone


def expire(entries: List[Dict[str, Any]], now: float) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Drop every entry whose expiry has come; (kept, expired)."""
    due = [e for e in entries if e.get("expires_at") is not None and e["expires_at"] <= now]
    return sort_entries(e for e in entries if e not in due), due


# --------------------------------------------------------------------------
# Talking to Postfix


def _run(runner: Runner, cmd: List[str], data: Optional[str] = None) -> subprocess.CompletedProcess:
    return runner(cmd, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)


def master_services(config_dir: str, runner: Runner = subprocess.run) -> List[str]:
    """Names of the unix-type services of master.cf (the transports a map may name)."""
    proc = _run(runner, ["postconf", "-c", config_dir, "-M"])
    if proc.returncode != 0:
        raise OverrideError("postconf -c %s -M failed: %s" % (config_dir, proc.stderr.strip()))
    names = []
    for line in proc.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1] == "unix":
            names.append(fields[0])
    return names


def check_honoured(config_dir: str, runner: Runner = subprocess.run) -> None:
    """main.cf must list the runbook map first in transport_maps (role postfix renders it so);
    otherwise an override would be written and silently ignored."""
    proc = _run(runner, ["postconf", "-c", config_dir, "-xh", "transport_maps"])
    if proc.returncode != 0:
        raise OverrideError("postconf -c %s -xh transport_maps failed: %s" % (config_dir, proc.stderr.strip()))
    maps = [m for m in re.split(r"[\s,]+", proc.stdout.strip()) if m]
    wanted = "texthash:" + map_path(config_dir)
    if not maps or maps[0] != wanted:
        raise OverrideError("main.cf of %s does not list %s first in transport_maps (it has: %s): converge it with "
                            "role postfix (site.yml) before using the runbooks" % (config_dir, wanted, ", ".join(maps) or "none"))


def check_transports(entries: List[Dict[str, Any]], services: List[str]) -> None:
    for e in entries:
        if e["transport"] not in services:
            raise OverrideError("transport %r of %s is not a unix service of master.cf (known: %s)"
                                % (e["transport"], e["domain"], ", ".join(sorted(services))))


def validate_map(config_dir: str, path: str, entries: List[Dict[str, Any]], runner: Runner = subprocess.run) -> None:
    """Ask Postfix to read the map at path and look every domain up: each must give its route."""
    if not entries:
        return
    keys = [e["domain"] for e in entries]
    proc = _run(runner, ["postmap", "-c", config_dir, "-q", "-", "texthash:" + path], "\n".join(keys) + "\n")
    if proc.returncode not in (0, 1) or proc.stderr.strip():
        raise OverrideError("postmap rejected %s: %s" % (path, proc.stderr.strip() or "rc=%d" % proc.returncode))
    found = {}
    for line in proc.stdout.splitlines():
        fields = line.split(None, 1)
        if len(fields) == 2:
            found[fields[0]] = fields[1].strip()
    for e in entries:
        if found.get(e["domain"]) != map_value(e):
            raise OverrideError("postmap looks %s up as %r, expected %r" % (e["domain"], found.get(e["domain"]), map_value(e)))


def read_file(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Write beside the target, fsync, rename over it."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def instance_unit(config_dir: str, runner: Runner = subprocess.run) -> str:
    """The systemd unit of the instance: postfix@- for the primary, postfix@NAME otherwise."""
    proc = _run(runner, ["postconf", "-c", config_dir, "-h", "multi_instance_name"])
    if proc.returncode != 0:
        raise OverrideError("postconf -c %s -h multi_instance_name failed: %s" % (config_dir, proc.stderr.strip()))
    name = proc.stdout.strip()
    return "postfix@%s.service" % (name or "-")


def reload_instance(config_dir: str, runner: Runner = subprocess.run) -> str:
    """Reload the instance if it runs (never start or restart it); returns its unit."""
    unit = instance_unit(config_dir, runner)
    proc = _run(runner, ["systemctl", "try-reload-or-restart", unit])
    if proc.returncode != 0:
        raise OverrideError("systemctl try-reload-or-restart %s failed: %s" % (unit, proc.stderr.strip()))
    return unit


def apply(config_dir: str, entries: List[Dict[str, Any]], runner: Runner = subprocess.run, reload: bool = True
          ) -> Dict[str, Any]:
    """Make the instance route by entries: check the transports, render and validate the map aside,
    move map and data into place (map first), reload. Nothing is written when nothing differs."""
    entries = sort_entries(check_entry(e) for e in entries)
    new_map, new_state = render_map(entries), render_state(entries)
    old_map, old_state = read_file(map_path(config_dir)), read_file(state_path(config_dir))
    result = {"changed": False, "reloaded": None, "map_before": old_map or "", "map_after": new_map}
    if new_map == old_map and new_state == old_state:
        return result
    if entries:
        check_honoured(config_dir, runner)
    check_transports(entries, master_services(config_dir, runner))
    fd, tmp = tempfile.mkstemp(prefix="." + MAP_NAME + ".check.", dir=config_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new_map)
        validate_map(config_dir, tmp, entries, runner)
    finally:
        os.unlink(tmp)
    write_atomic(map_path(config_dir), new_map)
    write_atomic(state_path(config_dir), new_state, 0o600)
    result["changed"] = True
    if reload and new_map != old_map:
        result["reloaded"] = reload_instance(config_dir, runner)
    return result


def config_dirs(runner: Runner = subprocess.run) -> List[str]:
    """/etc/postfix and every directory its multi_instance_directories lists."""
    proc = _run(runner, ["postconf", "-h", "config_directory", "multi_instance_directories"])
    if proc.returncode != 0:
        raise OverrideError("postconf failed: %s" % proc.stderr.strip())
    lines = proc.stdout.splitlines() + ["", ""]
    return [lines[0].strip() or "/etc/postfix"] + [d for d in re.split(r"[\s,]+", lines[1]) if d]


def expire_due(config_dir: str, now: float, runner: Runner = subprocess.run) -> List[Dict[str, Any]]:
    """Drop the due entries of one instance and apply the rest; the expired entries."""
    if read_file(state_path(config_dir)) is None:
        return []
    with locked(config_dir):
        entries = load_entries(config_dir)
        kept, due = expire(entries, now)
        if due:
            apply(config_dir, kept, runner)
    return due


def main_expire(argv: Optional[List[str]] = None) -> int:
    """durable-mx-runbook-expire: expire due overrides in every instance of the node."""
    argv = sys.argv[1:] if argv is None else argv
    runner = subprocess.run
    dirs = argv or config_dirs(runner)
    rc = 0
    now = time.time()
    for config_dir in dirs:
        try:
            for e in expire_due(config_dir, now, runner):
                print("%s: override of %s expired (%s %s, set %s by %s)" % (
                    config_dir, e["domain"], e["kind"], map_value(e), iso(e.get("set_at")), e.get("set_by") or "?"))
        except (OverrideError, OSError) as exc:
            print("%s: %s" % (config_dir, exc), file=sys.stderr)
            rc = 1
    return rc
