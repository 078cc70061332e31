"""Every role's meta/argument_specs.yml is its manual: it must document exactly the role's
defaults, with the same default values, and every variable must carry the role's prefix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES = sorted(p for p in (Path(__file__).resolve().parents[2] / "roles").iterdir() if p.is_dir())


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_role_has_argument_specs(role: Path) -> None:
    spec = _load(role / "meta" / "argument_specs.yml")
    main = spec["argument_specs"]["main"]
    assert main.get("short_description"), f"{role.name}: short_description missing"
    for name, option in main.get("options", {}).items():
        assert option.get("description"), f"{role.name}: option {name} has no description"
        assert option.get("type"), f"{role.name}: option {name} has no type"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_specs_and_defaults_agree(role: Path) -> None:
    defaults_file = role / "defaults" / "main.yml"
    defaults = _load(defaults_file) if defaults_file.exists() else {}
    options = _load(role / "meta" / "argument_specs.yml")["argument_specs"]["main"].get("options", {})
    # Required options have no default: the inventory must set them.
    optional = sorted(name for name, option in options.items() if not option.get("required"))
    assert sorted(defaults) == optional, f"{role.name}: defaults and argument_specs name different variables"
    for name, value in defaults.items():
        assert options[name].get("default") == value, f"{role.name}: {name} default differs from defaults/main.yml"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_variables_carry_the_role_prefix(role: Path) -> None:
    options = _load(role / "meta" / "argument_specs.yml")["argument_specs"]["main"].get("options", {})
    prefix = role.name + "_"
    bad = [name for name in options if not name.startswith(prefix)]
    assert not bad, f"{role.name}: variables without the {prefix} prefix: {bad}"
