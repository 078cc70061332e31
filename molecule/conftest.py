"""Shared testinfra set-up for every Molecule scenario.

Molecule runs testinfra through the Ansible connection, which costs seconds per command over
`podman exec`. We point testinfra at the same nodes with its native `podman://` backend instead,
built from the inventory Molecule wrote, and keep the inventory groups for the tests.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest
import testinfra
import yaml

REPO = Path(__file__).resolve().parents[1]
MAILCOUNT = REPO / "tests" / "tools" / "mailcount.py"


def _inventory_groups() -> dict[str, list[str]]:
    path = os.environ.get("MOLECULE_INVENTORY_FILE")
    if not path or not Path(path).exists():
        raise RuntimeError("MOLECULE_INVENTORY_FILE is not set: run these tests through `molecule verify`")
    groups: dict[str, set[str]] = {}

    def walk(name: str, body: dict | None) -> set[str]:
        body = body or {}
        members = set(body.get("hosts") or {})
        for child, child_body in (body.get("children") or {}).items():
            members |= walk(child, child_body)
        groups.setdefault(name, set()).update(members)
        return members

    for name, body in (yaml.safe_load(Path(path).read_text()) or {}).items():
        walk(name, body)
    return {name: sorted(members) for name, members in groups.items()}


def pytest_configure(config: pytest.Config) -> None:
    # Replace Molecule's `--connection=ansible` with the podman backend for all nodes.
    if os.environ.get("MOLECULE_INVENTORY_FILE"):
        config.option.connection = None
        config.option.hosts = ",".join(f"podman://{name}" for name in _inventory_groups()["all"])


@pytest.fixture(scope="session")
def group() -> Callable[[str], list]:
    """group("mx") -> testinfra hosts of that inventory group."""
    groups = _inventory_groups()

    def get(name: str) -> list:
        if not groups.get(name):
            raise LookupError(f"inventory group {name!r} has no hosts")
        return [testinfra.get_host(f"podman://{member}") for member in groups[name]]

    return get


def node(name: str):
    """The testinfra host of one node (container) by name."""
    return testinfra.get_host(f"podman://{name}")


def copy_between(src_node: str, src: str, dst_node: str, dst: str) -> None:
    """Copy a file from one node to another through the lab host."""
    local = Path("/tmp") / f"dmx-copy-{os.getpid()}-{Path(src).name}"
    subprocess.run(["podman", "cp", f"{src_node}:{src}", str(local)], check=True)
    subprocess.run(["podman", "cp", str(local), f"{dst_node}:{dst}"], check=True)
    local.unlink()


@pytest.fixture(scope="session")
def mailcount() -> Callable[[str], str]:
    """Install tests/tools/mailcount.py on a node; returns the command to run it there."""

    def install(name: str) -> str:
        subprocess.run(["podman", "cp", str(MAILCOUNT), f"{name}:/usr/local/bin/mailcount"], check=True)
        return "python3 /usr/local/bin/mailcount"

    return install


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> float:
    """Poll until predicate() is true; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


def json_out(host, command: str, *args: str) -> dict:
    """Run a command that prints one JSON object on its last line."""
    return json.loads(host.check_output(command, *args).strip().splitlines()[-1])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    # On a failure, show the Postfix journal of the mail nodes: it usually says why.
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed and os.environ.get("MOLECULE_INVENTORY_FILE"):
        for name in _inventory_groups().get("mx", []):
            journal = node(name).run("journalctl -q --no-pager -n 25 -u 'postfix*'").stdout
            report.sections.append((f"journal of postfix on {name}", journal))


def run_module(name: str, module: str, args: dict, check: bool = False) -> dict:
    """Run one of our Ansible modules on a node (ad hoc, JSON result)."""
    # Ad-hoc arguments are key=value; lists are comma-separated.
    pairs = [f"{key}={shlex.quote(','.join(value) if isinstance(value, list) else str(value))}"
             for key, value in args.items()]
    command = ["ansible", "-i", os.environ["MOLECULE_INVENTORY_FILE"], name, "-m", module, "-a", " ".join(pairs)]
    if check:
        command.append("--check")
    env = dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="ansible.posix.json")
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    try:
        outcome = json.loads(result.stdout)["plays"][0]["tasks"][0]["hosts"][name]
    except (ValueError, KeyError, IndexError) as exc:
        raise AssertionError(f"{module} on {name}: no result ({exc}): {result.stdout[-800:]} {result.stderr[-800:]}")
    return outcome


def run_playbook(playbook: str, *extra: str) -> tuple[int, dict]:
    """Run one of the repository's playbooks against the scenario's inventory; (rc, JSON result)."""
    env = dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
               ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    result = subprocess.run(["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(REPO / playbook), *extra],
                            capture_output=True, text=True, env=env, cwd=REPO, stdin=subprocess.DEVNULL)
    try:
        return result.returncode, json.loads(result.stdout)
    except ValueError as exc:
        raise AssertionError(f"{playbook}: no JSON result ({exc}): {result.stdout[-800:]} {result.stderr[-800:]}")


def task_result(outcome: dict, task_name: str) -> dict:
    """The (first host's) result of a task of a ansible.posix.json run."""
    for play in outcome["plays"]:
        for task in play["tasks"]:
            # Tasks of a role are named "ROLE : NAME".
            if task["task"]["name"].split(" : ", 1)[-1].startswith(task_name):
                return next(iter(task["hosts"].values()))
    raise AssertionError(f"task {task_name!r} not in the run")
