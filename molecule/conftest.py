"""Shared testinfra set-up for every Molecule scenario.

Molecule runs testinfra through the Ansible connection, which costs seconds per command over
`podman exec`. We point testinfra at the same nodes with its native `podman://` backend instead,
built from the inventory Molecule wrote, and keep the group names so a test module can target
a group with `testinfra_hosts = nodes("mx")`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml


def _inventory() -> dict:
    path = os.environ.get("MOLECULE_INVENTORY_FILE")
    if not path or not Path(path).exists():
        raise RuntimeError("MOLECULE_INVENTORY_FILE is not set: run these tests through `molecule verify`")
    return yaml.safe_load(Path(path).read_text()) or {}


def _groups(inventory: dict) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}

    def walk(name: str, body: dict) -> list[str]:
        members = list((body or {}).get("hosts") or {})
        for child, child_body in ((body or {}).get("children") or {}).items():
            members += walk(child, child_body)
        groups[name] = sorted(set(groups.get(name, []) + members))
        return members

    for name, body in inventory.items():
        walk(name, body)
    return groups


def nodes(group: str = "all") -> list[str]:
    """testinfra host specs (podman://NAME) for the nodes of an inventory group."""
    members = _groups(_inventory()).get(group)
    if not members:
        raise RuntimeError(f"inventory group {group!r} has no hosts")
    return [f"podman://{name}" for name in members]


def pytest_configure(config: pytest.Config) -> None:
    # Replace Molecule's `--connection=ansible` with the podman backend for all nodes.
    if os.environ.get("MOLECULE_INVENTORY_FILE"):
        config.option.connection = None
        config.option.hosts = ",".join(nodes("all"))
