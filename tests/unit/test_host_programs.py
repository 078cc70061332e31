"""The host program table, tests/tools/host-programs.txt, is right and complete.

(a) Every program in it comes from the Debian package it names, or from one that package
    Depends on (dpkg -S on this machine, where the program is installed), and that package is
    installed by make deps (`apt`) or is on every Debian 12 (`base`); `venv` programs come from
    the distribution named.
(b) Every program the sources run on the host (read by host_scan.py) is in it or is a shell
    builtin; so is what podman itself runs here.
(c) The preflight names a missing program and its package, in one line.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import host_scan
from host_scan import ROOT

TABLE = ROOT / "tests" / "tools" / "host-programs.txt"
PREFLIGHT = ROOT / "tests" / "tools" / "preflight.sh"
VENV = ROOT / ".venv"
# Where Debian's packages put programs (not /usr/local, pyenv or ~/.cargo).
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# Bash builtins and keywords the sources use: no package brings them.
BUILTINS = frozenset({":", ".", "[", "[[", "break", "cd", "command", "continue", "declare", "echo", "exit", "export",
                      "false", "local", "mapfile", "printf", "pwd", "read", "return", "set", "shift", "shopt", "source",
                      "trap", "true", "wait"})
# Copied into the lab nodes and run there (its postcat is the node's).
NODE_SIDE = frozenset({ROOT / "tests" / "tools" / "mailcount.py"})
# What podman runs on this host besides its own binary: the runtime (files/lab/containers.conf) and
# the network stack of podman 4.3 (netavark, its DNS, and the iptables/ip6tables it calls: issue #13).
PODMAN_NETWORK = ("netavark", "aardvark-dns", "iptables", "ip6tables")


@dataclass(frozen=True)
class Row:
    program: str
    package: str
    source: str
    why: str

    @property
    def name(self) -> str:
        return Path(self.program).name


def _table() -> list[Row]:
    rows = []
    for line in TABLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            program, package, source, *why = line.split()
            rows.append(Row(program, package, source, " ".join(why)))
    return rows


ROWS = _table()
DEBIAN_ROWS = [row for row in ROWS if row.source in ("apt", "base")]
VENV_ROWS = [row for row in ROWS if row.source == "venv"]


def scan_sources() -> list[host_scan.Found]:
    """What the Makefile, the scripts, the host-side playbooks and Python run on the host."""
    found = host_scan.scan_makefile(ROOT / "Makefile")
    for path in sorted([*ROOT.glob("tests/**/*.sh"), ROOT / ".ci" / "run"]):
        found += host_scan.scan_shell_file(path)
    yaml_files = sorted([*ROOT.glob("playbooks/**/*.yml"), *ROOT.glob("roles/*/*/*.yml"),
                         *ROOT.glob("molecule/**/*.yml")])
    var_files = [p for p in yaml_files if {"vars", "defaults"} & set(p.relative_to(ROOT).parts)]
    found += host_scan.scan_ansible([ROOT / "site.yml", *yaml_files], var_files)
    python = {*ROOT.glob("bench/*.py"), *ROOT.glob("tests/tools/*.py"), *ROOT.glob("tests/unit/*.py"),
              *ROOT.glob("tests/lab/*.py"), ROOT / "molecule" / "conftest.py", *ROOT.glob("molecule/*/tests/*.py")}
    for path in sorted(python - NODE_SIDE):
        found += host_scan.scan_python_file(path)
    return found


@functools.cache
def _found() -> frozenset[host_scan.Found]:
    return frozenset(scan_sources())


@functools.cache
def _host_packages() -> tuple[str, ...]:
    """HOST_PACKAGES as make sees it."""
    result = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(ROOT),
                             "--eval", "dmx-print-host-packages: ; @echo $(HOST_PACKAGES)", "dmx-print-host-packages"],
                            capture_output=True, text=True, check=True)
    return tuple(result.stdout.split())


def _usrmerge(path: str) -> set[str]:
    # Debian 12 merges /bin into /usr/bin, but dpkg keeps the path each package ships.
    if re.match(r"/usr/(s?bin|lib)/", path):
        return {path, path[4:]}
    if re.match(r"/(s?bin|lib)/", path):
        return {path, "/usr" + path}
    return {path}


def _dpkg_owners(path: str) -> set[str]:
    candidates = _usrmerge(path) | _usrmerge(os.path.realpath(path))
    result = subprocess.run(["dpkg", "-S", *sorted(candidates)], capture_output=True, text=True, check=False)
    owners: set[str] = set()
    for line in result.stdout.splitlines():
        if not line.startswith("diversion by"):
            owners |= {p.strip().split(":")[0] for p in line.partition(": ")[0].split(",")}
    return owners


@functools.cache
def _hard_depends() -> dict[str, frozenset[str]]:
    """Installed package -> what it Depends or Pre-Depends on without an alternative."""
    result = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Status}\t${Pre-Depends}, ${Depends}\n"],
                            capture_output=True, text=True, check=True)
    depends = {}
    for line in result.stdout.splitlines():
        package, status, relations = line.split("\t")
        if status.endswith(" installed"):
            hard = [r for r in relations.split(",") if r.strip() and "|" not in r]
            depends[package] = frozenset(r.split()[0].split(":")[0] for r in hard)
    return depends


def _brought_by(package: str) -> set[str]:
    """The package and everything installing it must install too."""
    seen, todo = {package}, [package]
    while todo:
        for dependency in _hard_depends().get(todo.pop(), ()):
            if dependency not in seen:
                seen.add(dependency)
                todo.append(dependency)
    return seen


# ------------------------------------------------------------------------------------ the table


def test_table_is_well_formed() -> None:
    assert ROWS, "empty table"
    assert {row.source for row in ROWS} <= {"apt", "base", "venv"}
    names = [row.name for row in ROWS]
    assert len(names) == len(set(names)), f"listed twice: {sorted({n for n in names if names.count(n) > 1})}"
    assert all(row.why for row in ROWS), "every row says who runs the program"


def test_host_packages_are_the_apt_rows() -> None:
    expected = list(dict.fromkeys(row.package for row in ROWS if row.source == "apt"))
    assert list(_host_packages()) == expected


@pytest.mark.parametrize("row", DEBIAN_ROWS, ids=lambda row: row.name)
def test_package_is_installed_by_deps_or_on_every_debian(row: Row) -> None:
    if row.source == "apt":
        assert row.package in _host_packages(), f"{row.package} ({row.program}) is not in HOST_PACKAGES"
        return
    result = subprocess.run(["dpkg-query", "-W", "-f", "${Essential} ${Priority}", row.package],
                            capture_output=True, text=True, check=False)
    essential, _, priority = result.stdout.partition(" ")
    assert essential == "yes" or priority == "required", (
        f"{row.package} ({row.program}) is marked base but is neither Essential nor priority required "
        f"({result.stdout or result.stderr.strip()}): make it an apt row")


@pytest.mark.parametrize("row", DEBIAN_ROWS, ids=lambda row: row.name)
def test_program_comes_from_its_package(row: Row) -> None:
    path = row.program if row.program.startswith("/") else shutil.which(row.program, path=SYSTEM_PATH)
    if not path or not os.access(path, os.X_OK):
        pytest.skip(f"{row.program} is not installed on this machine: dpkg cannot tell where it comes from")
    owners = _dpkg_owners(path)
    assert owners, f"{row.program} ({path}) belongs to no Debian package"
    assert owners & _brought_by(row.package), (
        f"{row.program} ({path}) comes from {', '.join(sorted(owners))}, which installing {row.package} does not bring")


@pytest.mark.parametrize("row", VENV_ROWS, ids=lambda row: row.name)
def test_venv_program_comes_from_its_distribution(row: Row) -> None:
    if not (VENV / "bin").is_dir():
        pytest.skip("no .venv here: make deps makes it")
    assert os.access(VENV / "bin" / row.program, os.X_OK), f"{row.program} is not in .venv/bin"
    if row.package == "python3-venv":  # the interpreter python3 -m venv puts there
        assert "python3-venv" in _host_packages()
        return
    if Path(sys.prefix).resolve() != VENV.resolve():
        pytest.skip("not running from .venv: its distributions are not the ones importlib sees")
    files = importlib.metadata.distribution(row.package).files or []
    assert any(str(f).endswith(f"bin/{row.program}") for f in files), f"{row.package} does not install bin/{row.program}"


# ----------------------------------------------------------------------------- the sources


def test_sources_run_only_listed_programs() -> None:
    listed = {row.name for row in ROWS} | BUILTINS
    unlisted = sorted({f"{file}: {program}" for file, program in _found() if program not in listed})
    assert not unlisted, (
        "host programs missing from tests/tools/host-programs.txt (add each with its Debian package;"
        " a {{ var }} is a command the scan could not resolve):\n  " + "\n  ".join(unlisted))


def test_podman_helpers_are_listed() -> None:
    runtime = re.search(r'^runtime\s*=\s*"([^"]+)"', (ROOT / "files" / "lab" / "containers.conf").read_text(), re.M)
    assert runtime, "files/lab/containers.conf names no runtime"
    listed = {row.name for row in ROWS if row.source == "apt"}
    missing = sorted({runtime.group(1), *PODMAN_NETWORK} - listed)
    assert not missing, f"podman runs these on the host, but they are not apt rows: {missing}"


@pytest.mark.parametrize(("file", "program"), [
    ("Makefile", "python3"),                              # make deps: python3 -m venv
    ("Makefile", "pip"),                                  # $(VENV)/bin/pip
    ("roles/lab/tasks/present.yml", "truncate"),          # lab role, run on localhost
    ("roles/lab/tasks/present.yml", "podman"),            # containers.podman modules and commands
    ("roles/lab/files/build-node-image.sh", "debootstrap"),  # ansible.builtin.script of the lab role
    ("roles/lab/files/loopdev.sh", "losetup"),            # inside $(...) inside double quotes
    ("tests/promtool/run.sh", "dpkg-deb"),
    ("playbooks/chaos/tasks/flush.yml", "ansible-playbook"),  # {{ chaos_playbook_cmd }}, resolved
    ("playbooks/chaos/kill-node.yml", "python"),          # {{ chaos_tool }}: ansible_playbook_python
    ("bench/queue_read.py", "sync"),
    ("molecule/tenants/tests/tenant_lab.py", "ansible-playbook"),
])
def test_scan_finds_known_host_programs(file: str, program: str) -> None:
    assert (file, program) in _found()


@pytest.mark.parametrize(("file", "program"), [
    ("roles/lab/files/build-node-image.sh", "systemctl"),  # chroot "$root" systemctl: the new root's
    ("bench/exporter.py", "systemctl"),                    # subprocess.run in a string run on the node
    ("playbooks/chaos/power-cut.yml", "xfs_io"),           # podman exec ... sh -c 'xfs_io ...'
    ("molecule/durable/tests/test_4_faults.py", "mkfs.xfs"),  # testinfra host.check_output: in the node
])
def test_scan_leaves_node_programs_out(file: str, program: str) -> None:
    assert (file, program) not in _found()


# ----------------------------------------------------------------------------- the readers


@pytest.mark.parametrize(("code", "programs"), [
    ("podman exec n sh -c 'xfs_io -x -c shutdown /q' && losetup -d /dev/loop0", ["podman", "losetup"]),
    ('x=$(mktemp -d); [ -n "$(losetup -j "$f")" ] || echo "none (really)"', ["mktemp", "[", "losetup", "echo"]),
    ("case $a in\n  attach) truncate -s 1G f ;;\n  *) exit 2 ;;\nesac", ["truncate", "exit"]),
    ("DEBIAN_FRONTEND=noninteractive apt-get install -y x 2>&1 | tee log", ["apt-get", "tee"]),
    ("# podman in a comment isn't run\nrm -f x  # nor losetup", ["rm"]),
    ("n=$(( $(date +%s) - start )); while read -r a; do grep -q a b; done < <(dmesg)", ["date", "read", "grep", "dmesg"]),
    ("command -v promtool >/dev/null || env FOO=1 timeout 5 curl -s x", ["command", "env", "timeout", "curl"]),
    ('f() { ip -o link; }\nusage=${1:?usage: f NAME | other}\nf', ["ip"]),
    ('case $x in\n  apt | base) [[ -z $p || $p == x ]] && ss -tln ;;\nesac', ["[[", "ss"]),
])
def test_shell_reader(code: str, programs: list[str]) -> None:
    assert host_scan.shell_programs(code) == programs


def test_makefile_reader(tmp_path: Path) -> None:
    makefile = tmp_path / "Makefile"
    makefile.write_text(textwrap.dedent("""\
        KERNEL := $(shell uname -r)
        all:
        \t@$(MAKE) -C sub && for s in $(LIST); do echo "$$s"; done; \\
        \t  missing=$$(dpkg -s foo || true)
        \t$(VENV)/bin/pip install x
        """))
    assert [p for _, p in host_scan.scan_makefile(makefile)] == ["uname", "make", "echo", "dpkg", "true", "pip"]


def test_python_reader(tmp_path: Path) -> None:
    source = tmp_path / "tool.py"
    source.write_text(textwrap.dedent("""\
        import subprocess
        PROBE = "subprocess.run(['systemctl', 'restart', 'x'])"
        def f(host, path):
            command = ["postcat", "-bq"] if path else ["postcat", "-b"]
            subprocess.run(command)
            subprocess.run(["podman", "exec", "n", "ip", "a"], check=True)
            subprocess.check_output("sync && udevadm settle", shell=True)
            host.check_output("losetup -a")
        """))
    assert [p for _, p in host_scan.scan_python_file(source)] == ["postcat", "postcat", "podman", "sync", "udevadm"]


def test_ansible_reader(tmp_path: Path) -> None:
    playbook = tmp_path / "play.yml"
    playbook.write_text(textwrap.dedent("""\
        - hosts: localhost
          vars:
            tool: "{{ ansible_playbook_python }} x.py"
            run_in_node: podman exec n
          tasks:
            - ansible.builtin.command: "{{ tool }} go"
            - ansible.builtin.command: "{{ run_in_node }} systemctl stop x"
            - ansible.builtin.command:
                cmd: truncate -s 1G f
            - ansible.builtin.command: "{{ unknown_command }} x"
            - ansible.builtin.command: "env A={{ a | b }}/c B=1 {{ some_dir }}/ansible-playbook x.yml"
            - ansible.builtin.command: xfs_io -x -c shutdown /q
              delegate_to: mx1
        - hosts: mx
          tasks:
            - ansible.builtin.command: mkfs.xfs /dev/vdb
            - ansible.builtin.command: curl -s http://localhost
              delegate_to: localhost
        """))
    found = [p for _, p in host_scan.scan_ansible([playbook], [])]
    assert found == ["python", "podman", "truncate", "{{ unknown_command }}", "env", "ansible-playbook", "curl"]


# ------------------------------------------------------------------------------- the preflight


def _path_of_links(tmp_path: Path, leave_out: str = "") -> tuple[Path, list[str]]:
    """A PATH directory with a link to every PATH-looked-up program of the table that this machine has."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    absent = []
    for row in DEBIAN_ROWS:
        if row.program.startswith("/") or row.program == leave_out:
            continue
        found = shutil.which(row.program, path=os.environ.get("PATH", "") + ":" + SYSTEM_PATH)
        if found:
            (bin_dir / row.program).symlink_to(found)
        else:
            absent.append(row.program)
    return bin_dir, absent


def _podman_helpers_absent() -> list[str]:
    return [row.program for row in DEBIAN_ROWS if row.program.startswith("/") and not os.access(row.program, os.X_OK)]


def _preflight(path: Path) -> subprocess.CompletedProcess:
    bash = shutil.which("bash", path=SYSTEM_PATH)
    assert bash, "no bash"
    return subprocess.run([bash, str(PREFLIGHT)], env={"PATH": str(path), "VENV": str(VENV)},
                          capture_output=True, text=True, check=False)


def test_preflight_names_the_missing_program_and_its_package(tmp_path: Path) -> None:
    bin_dir, absent = _path_of_links(tmp_path, leave_out="iptables")
    result = _preflight(bin_dir)
    assert result.returncode == 1, f"preflight did not notice that iptables is missing: {result.stdout}{result.stderr}"
    lines = [line for line in result.stdout.splitlines() if "missing host program" in line]
    assert ("preflight: missing host program iptables (Debian package iptables): run make deps, or apt-get install iptables"
            in lines)
    # Nothing that is there is reported missing.
    assert {line.split()[4] for line in lines} == {"iptables", *absent, *_podman_helpers_absent()}


def test_preflight_passes_quickly_when_everything_is_there(tmp_path: Path) -> None:
    bin_dir, absent = _path_of_links(tmp_path)
    absent += _podman_helpers_absent()
    absent += [row.program for row in VENV_ROWS if not os.access(VENV / "bin" / row.program, os.X_OK)]
    if absent:
        pytest.skip(f"not installed on this machine: {absent}")
    start = time.monotonic()
    result = _preflight(bin_dir)
    took = time.monotonic() - start
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert took < 1, f"preflight took {took:.2f} s"
