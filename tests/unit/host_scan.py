"""Find the programs our code runs on the lab host (not in the lab containers), by reading it.

Heuristic readers, one per kind of source, each returning (file, program) pairs:
- shell: scripts and Makefile recipes; the first word of every command (after |, &&, ;, $( ...),
  quoted text and arithmetic left out, so that `podman exec NODE sh -c '...'` yields podman only;
- Ansible: command/shell/script tasks of plays on localhost (following roles and includes) or
  delegated to localhost; a leading {{ var }} is resolved from the vars the playbooks define;
- Python: argv[0] of subprocess calls given as a literal list (or a name bound to one); testinfra's
  host.run/check_output run in the nodes and are not read.
Used by test_host_programs.py, which compares what it finds with tests/tools/host-programs.txt.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any, Iterator

import yaml

ROOT = Path(__file__).resolve().parents[2]

Found = tuple[str, str]  # (file relative to the repository, program)

# ---------------------------------------------------------------------------------------- shell

# Words after which the next word is a command again.
_PREFIX_KEYWORDS = frozenset({"!", "{", "if", "then", "else", "elif", "do", "while", "until", "time"})
# Words whose following words are not commands, up to the next separator.
_SKIP_KEYWORDS = frozenset({"for", "case", "select", "in", "function"})
_END_KEYWORDS = frozenset({"}", "fi", "done", "esac"})
# Programs that run the program named after their options.
_WRAPPERS = frozenset({"exec", "command", "env", "nohup", "timeout", "xargs"})
_ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*(\[[^]]*\])?\+?=")
_TOKEN = re.compile(r"\$\(|\|\||&&|;;|[|;&()\n`]|[^\s|;&()`]+")
_ARITHMETIC = re.compile(r"\$?\(\((?:[^()]|\([^()]*\))*\)\)")
_REDIRECT = re.compile(r"\d*(?:>&|<&)\d*-?|&>>?|\d*(?:>>|>\||<<<|>|<)\s*(?=[^\s(])[^\s;|&()<>]+")
_FUNCTION = re.compile(r"^\s*(?:function\s+)?([\w.-]+)\s*\(\)", re.M)
_CASE_PATTERN = re.compile(r"^\s*\(?[^\s()|]+(\s*\|\s*[^\s()|]+)*\)", re.M)
_TEST = re.compile(r"\[\[.*?\]\]", re.S)
_ARRAY = re.compile(r"\b[A-Za-z_]\w*\+?=\([^()]*\)")
# Placeholders for what only run time knows: quoted text, Jinja expressions, make variables.
_QUOTED, _JINJA_VALUE, _MAKE_VALUE = "\x01", "\x02", "\x03"
_DYNAMIC = frozenset({_QUOTED, _JINJA_VALUE, _MAKE_VALUE})


def _code_only(text: str) -> str:
    """Drop comments; replace quoted text and ${...} by a placeholder, keeping the $(...) inside
    double quotes (they run)."""
    out: list[str] = []
    stack: list[str] = []  # open contexts: '"' (double quotes), ')' (command substitution)
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            out.append(_QUOTED)
            continue
        if stack and stack[-1] == '"':
            if c == '"':
                stack.pop()
            elif text.startswith("$(", i):
                stack.append(")")
                out.append("$(")
                i += 1
        elif c == "#" and (i == 0 or text[i - 1] in " \t\n;|&("):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        elif c == "'":
            end = text.find("'", i + 1)
            i = len(text) if end < 0 else end
            out.append(_QUOTED)
        elif text.startswith("${", i):
            end = text.find("}", i)
            i = len(text) if end < 0 else end
            out.append(_QUOTED)
        elif c == '"':
            stack.append('"')
            out.append(_QUOTED)
        else:
            if c == "(":
                stack.append(")")
            elif c == ")" and stack:
                stack.pop()
            out.append(c)
        i += 1
    return "".join(out)


def shell_programs(text: str) -> list[str]:
    """The programs a piece of shell code runs (heuristic: the first word of each command)."""
    text = text.replace("\\\n", " ")
    functions = set(_FUNCTION.findall(text))
    text = _FUNCTION.sub(";", _code_only(text))
    text = _CASE_PATTERN.sub(" ", text)
    text = _ARRAY.sub(" ", text)
    # [[ ... ]] tests (their || and && do not start commands); a $(...) inside still runs.
    text = _TEST.sub(lambda m: "[[ " + " ".join(re.findall(r"\$\([^()]*\)", m.group(0))) + " ]]", text)
    # $((...)) and ((...)) compute; only command substitutions inside them run anything.
    text = _ARITHMETIC.sub(lambda m: " ; ".join(re.findall(r"\$\([^()]*\)", m.group(0)[1:])), text)
    text = _REDIRECT.sub(" ", text)
    programs: list[str] = []
    expect, skipping, wrapped = True, False, ""
    for token in _TOKEN.findall(text):
        if token in ("$(", "||", "&&", ";;", "|", ";", "&", "(", "\n", "`"):
            expect, skipping, wrapped = True, False, ""
            continue
        if token == ")":
            expect, skipping, wrapped = False, False, ""
            continue
        if skipping or not expect:
            continue
        if wrapped:
            if wrapped == "command" and token in ("-v", "-V"):
                expect = False  # command -v only looks the program up
            if token.startswith("-") or _ASSIGNMENT.match(token) or token[0].isdigit():
                continue
        if _ASSIGNMENT.match(token) or token in _PREFIX_KEYWORDS:
            continue
        if token in _SKIP_KEYWORDS:
            skipping = True
            continue
        expect, wrapped = False, ""
        if token in _END_KEYWORDS or token in functions or token.startswith("$") or _DYNAMIC & set(token):
            continue  # a keyword, a function of the script, or a name only known at run time
        program = token.rsplit("/", 1)[-1]
        programs.append(program)
        if program in _WRAPPERS:
            expect, wrapped = True, program
    return programs


def shebang_programs(text: str) -> list[str]:
    """#!/usr/bin/env bash -> [env, bash]; #!/bin/bash -> [bash]."""
    if not text.startswith("#!"):
        return []
    words = text[2:].splitlines()[0].split()
    programs = [Path(words[0]).name] if words else []
    if programs == ["env"] and len(words) > 1:
        programs.append(words[1])
    return programs


def scan_shell_file(path: Path) -> list[Found]:
    text = path.read_text()
    return [(_rel(path), p) for p in shebang_programs(text) + shell_programs(text)]


# Make variables a recipe may start a command with, as the shell sees them.
_MAKE_VALUES = {"MAKE": "make", "VENV": ".venv", "CURDIR": "."}
_MAKE_REF = re.compile(r"\$\(([^()$]*)\)")
_MAKE_SHELL = re.compile(r"\$\(shell ((?:[^()]|\([^()]*\))*)\)")


def _expand_make(text: str) -> str:
    text = text.replace("$$", "\0")
    while _MAKE_REF.search(text):
        text = _MAKE_REF.sub(lambda m: _MAKE_VALUES.get(m.group(1).strip(), _MAKE_VALUE), text)
    return text.replace("\0", "$")


def scan_makefile(path: Path) -> list[Found]:
    """Recipe lines (tab-indented, with their continuations) and $(shell ...) calls."""
    text = path.read_text().replace("\\\n", " ")
    found: list[Found] = []
    for line in text.splitlines():
        if line.startswith("\t"):
            found += [(_rel(path), p) for p in shell_programs(_expand_make(line.strip().lstrip("@+-")))]
        else:
            for body in _MAKE_SHELL.findall(line):
                found += [(_rel(path), p) for p in shell_programs(_expand_make(body))]
    return found


# -------------------------------------------------------------------------------------- Ansible

_LOCAL = frozenset({"localhost", "127.0.0.1"})
_COMMAND_MODULES = frozenset({"ansible.builtin.command", "command"})
_SHELL_MODULES = frozenset({"ansible.builtin.shell", "shell"})
_SCRIPT_MODULES = frozenset({"ansible.builtin.script", "script"})
_INCLUDE_TASKS = frozenset({"ansible.builtin.include_tasks", "ansible.builtin.import_tasks",
                            "include_tasks", "import_tasks"})
_INCLUDE_ROLE = frozenset({"ansible.builtin.include_role", "ansible.builtin.import_role",
                           "include_role", "import_role"})
_IMPORT_PLAYBOOK = frozenset({"ansible.builtin.import_playbook", "import_playbook"})
# Modules that run a program on the host they run on.
_MODULE_PROGRAMS = {"containers.podman.": "podman"}
# Magic variables that name a program: the Python that runs Ansible is the venv's interpreter.
_MAGIC = {"ansible_playbook_python": "python"}
_JINJA_HEAD = re.compile(r"\{\{\s*([A-Za-z_]\w*)[^}]*\}\}(\S*)")
# `env NAME=value ... program`: the assignments (a value may hold a {{ var }} with spaces).
_ENV_PREFIX = re.compile(r"env\s+(?:[A-Za-z_]\w*=(?:\{\{[^}]*\}\}|\S)*\s+)*")
_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.S)


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None


def _is_local(hosts: Any) -> bool:
    values = hosts if isinstance(hosts, list) else str(hosts).split(",")
    return any(str(h).strip() in _LOCAL for h in values)


class AnsibleScan:
    """Walks playbooks from their plays on localhost into roles and included task files."""

    def __init__(self, variables: dict[str, list[str]]) -> None:
        self.variables = variables
        self.found: list[Found] = []
        self._seen: set[tuple[Path, bool]] = set()

    def command_programs(self, command: str, seen: tuple[str, ...] = ()) -> list[str]:
        """The program a command line starts with; a leading {{ var }} is looked up."""
        command = str(command).strip()
        env = _ENV_PREFIX.match(command)
        if env:
            return ["env"] + self.command_programs(command[env.end():], seen)
        head = _JINJA_HEAD.match(command)
        if not head:
            return [Path(command.split()[0]).name] if command.split() else []
        name, rest = head.groups()
        if rest.startswith("/"):  # {{ some_dir }}/program
            return [Path(rest).name]
        if name in _MAGIC:
            return [_MAGIC[name]]
        if name in seen or name not in self.variables:
            return ["{{ " + name + " }}"]  # unresolved: the test reports it
        return [p for value in self.variables[name] for p in self.command_programs(value + rest, seen + (name,))]

    def playbook(self, path: Path) -> None:
        data = _load_yaml(path)
        if not isinstance(data, list):
            return
        for play in data:
            if not isinstance(play, dict):
                continue
            for key in _IMPORT_PLAYBOOK & play.keys():
                target = path.parent / str(play[key])
                if target.exists():
                    self.playbook(target)
            if "hosts" not in play:
                continue
            local = _is_local(play["hosts"])
            for section in ("pre_tasks", "tasks", "post_tasks", "handlers"):
                self.tasks(play.get(section) or [], path, local)
            for role in play.get("roles") or []:
                name = role if isinstance(role, str) else role.get("role") or role.get("name")
                self.task_file(ROOT / "roles" / str(name) / "tasks" / "main.yml", local)

    def task_file(self, path: Path, local: bool) -> None:
        if (path, local) in self._seen or not path.exists():
            return
        self._seen.add((path, local))
        data = _load_yaml(path)
        if isinstance(data, list):
            self.tasks(data, path, local)

    def tasks(self, tasks: list, path: Path, local: bool) -> None:
        for task in tasks:
            if not isinstance(task, dict):
                continue
            here = local
            if "delegate_to" in task:
                here = str(task["delegate_to"]).strip() in _LOCAL
            for section in ("block", "rescue", "always"):
                self.tasks(task.get(section) or [], path, here)
            self._task(task, path, here)

    def _task(self, task: dict, path: Path, local: bool) -> None:
        for key, value in task.items():
            if key in _INCLUDE_TASKS:
                name = value.get("file") if isinstance(value, dict) else value
                if name and "{{" not in str(name):
                    self.task_file(path.parent / str(name), local)
            elif key in _INCLUDE_ROLE and isinstance(value, dict):
                tasks_from = str(value.get("tasks_from", "main"))
                tasks_from += "" if tasks_from.endswith((".yml", ".yaml")) else ".yml"
                self.task_file(ROOT / "roles" / str(value.get("name")) / "tasks" / tasks_from, local)
            if not local:
                continue
            if key in _COMMAND_MODULES:
                argv = value.get("argv") if isinstance(value, dict) else None
                command = argv[0] if argv else value.get("cmd", "") if isinstance(value, dict) else value
                self.found += [(_rel(path), p) for p in self.command_programs(command)]
            elif key in _SHELL_MODULES:
                command = value.get("cmd", "") if isinstance(value, dict) else value
                self.found += [(_rel(path), p) for p in shell_programs(_JINJA.sub(_JINJA_VALUE, str(command)))]
            elif key in _SCRIPT_MODULES:
                script = (value.get("cmd", "") if isinstance(value, dict) else str(value)).split()[0]
                # A role's files/, or next to the playbook.
                candidates = [path.parent.parent / "files" / script, path.parent / script, path.parent / "files" / script]
                existing = [c for c in candidates if c.exists()]
                self.found += scan_shell_file(existing[0]) if existing else [(_rel(path), f"(script {script} not found)")]
            else:
                self.found += [(_rel(path), p) for prefix, p in _MODULE_PROGRAMS.items() if key.startswith(prefix)]


def _collect_vars(node: Any, variables: dict[str, list[str]]) -> None:
    """Every string under a `vars:` key, by name (all definitions: a name may differ per play)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "vars" and isinstance(value, dict):
                for name, text in value.items():
                    if isinstance(text, str):
                        variables.setdefault(str(name), []).append(text)
            _collect_vars(value, variables)
    elif isinstance(node, list):
        for item in node:
            _collect_vars(item, variables)


def scan_ansible(playbooks: list[Path], var_files: list[Path]) -> list[Found]:
    """Host-side commands of these playbooks (plays on localhost, tasks delegated to it)."""
    variables: dict[str, list[str]] = {}
    for path in var_files:
        data = _load_yaml(path)
        for name, text in (data.items() if isinstance(data, dict) else []):
            if isinstance(text, str):
                variables.setdefault(str(name), []).append(text)
    for path in playbooks:
        _collect_vars(_load_yaml(path), variables)
    scan = AnsibleScan(variables)
    for path in playbooks:
        data = _load_yaml(path)
        if not isinstance(data, list):
            continue
        if any(isinstance(play, dict) and ("hosts" in play or _IMPORT_PLAYBOOK & play.keys()) for play in data):
            scan.playbook(path)
        else:  # a task file: only what it delegates to localhost (includes from local plays follow)
            scan.tasks(data, path, local=False)
    return scan.found


# --------------------------------------------------------------------------------------- Python

_SUBPROCESS = frozenset({("subprocess", name) for name in ("run", "call", "check_call", "check_output", "Popen")}
                        | {("os", "system"), ("os", "popen")})


def _argv0(node: ast.AST, scope: ast.AST) -> Iterator[ast.AST]:
    """The first element of a literal argv, following a name to the lists bound to it in scope."""
    if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
        yield node.elts[0]
    elif isinstance(node, ast.IfExp):
        yield from _argv0(node.body, scope)
        yield from _argv0(node.orelse, scope)
    elif isinstance(node, ast.Name):
        for assign in ast.walk(scope):
            if isinstance(assign, ast.Assign) and any(getattr(t, "id", None) == node.id for t in assign.targets):
                yield from _argv0(assign.value, scope)


def scan_python_file(path: Path) -> list[Found]:
    tree = ast.parse(path.read_text())
    scopes: dict[ast.AST, ast.AST] = {}
    for parent in ast.walk(tree):
        if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for child in ast.walk(parent):
                scopes.setdefault(child, parent)
    found: list[Found] = []
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.args):
            continue
        owner = call.func.value.id if isinstance(call.func.value, ast.Name) else ""
        first = call.args[0]
        if (owner, call.func.attr) in _SUBPROCESS:
            if isinstance(first, ast.Constant) and isinstance(first.value, str):  # a command line
                found += [(_rel(path), p) for p in shell_programs(first.value)]
                continue
            for element in _argv0(first, scopes.get(call, tree)):
                if isinstance(element, ast.Constant) and isinstance(element.value, str):
                    found.append((_rel(path), Path(element.value).name))
    return found


def _rel(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
