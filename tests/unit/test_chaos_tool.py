"""The chaos exercises' measuring tool (tests/tools/chaos.py) and mailcount's sink count: the parts
that need no lab. The exercises themselves run on the lab (make chaos)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


chaos = _load("chaos")
mailcount = _load("mailcount")


def test_prometheus_times_parse_to_epoch_seconds() -> None:
    assert chaos.parse_time("1970-01-01T00:01:40Z") == 100.0
    assert abs(chaos.parse_time("1970-01-01T00:01:40.250123456Z") - 100.250123) < 1e-6
    assert chaos.parse_time("") is None
    assert chaos.parse_time("yesterday") is None


def test_sink_count_finds_copies_per_message_id_of_one_tag(tmp_path: Path) -> None:
    def store(name: str, message_id: str, body: str = "x") -> None:
        (tmp_path / name).write_bytes(f"From: a@b.test\r\nMessage-ID: {message_id}\r\n\r\n{body}\r\n".encode())

    store("1.eml", "<run7-1@mailcount.test>")
    store("2.eml", "<run7-1@mailcount.test>")  # a duplicate delivery
    store("3.eml", "<run7-2@mailcount.test>")
    store("4.eml", "<run70-1@mailcount.test>")  # another run whose tag starts alike
    store("5.eml", "<other-1@mailcount.test>")
    store("6.tmp", "<run7-3@mailcount.test>")  # not stored yet
    (tmp_path / "7.eml").write_bytes(b"From: a@b.test\r\n\r\nMessage-ID: <run7-4@mailcount.test>\r\n")  # body only
    assert mailcount.stored_message_ids(tmp_path, "run7") == {"<run7-1@mailcount.test>": 2, "<run7-2@mailcount.test>": 1}


def test_wait_for_traffic_polls_the_sender_unit_until_it_ends(monkeypatch) -> None:
    answers = iter(["activating", "active", "inactive"])
    asked: list[tuple[str, str]] = []

    def fake_sh(node: str, command: str, check: bool = True, timeout: float = 60):
        asked.append((node, command))
        return subprocess.CompletedProcess(command, 0, stdout=next(answers) + "\n", stderr="")

    monkeypatch.setattr(chaos, "sh", fake_sh)
    monkeypatch.setattr(chaos.time, "sleep", lambda s: None)
    state = {"sender": "sender", "unit": "mc-run7", "tag": "run7"}
    chaos.wait_for_traffic(state, timeout=60)
    assert asked == [("sender", "systemctl is-active mc-run7")] * 3

    monkeypatch.setattr(chaos, "sh", lambda *a, **k: subprocess.CompletedProcess("", 0, stdout="active\n", stderr=""))
    with pytest.raises(chaos.ChaosError, match="run7 still running after 0 s"):
        chaos.wait_for_traffic(state, timeout=0)


def test_report_marks_missing_and_stale_results_as_failed(tmp_path: Path, capsys) -> None:
    good = {"exercise": "kill-node", "passed": True, "problems": [], "finished": "2026-01-02T00:00:00Z",
            "time_to_detect_s": 1.2, "detect_signal": "health check", "time_to_mitigate_s": 3.4,
            "mitigation": "VIP failover", "sent": 10, "acked": 9, "delivered": 9, "lost": 0, "duplicated": 0,
            "events_s": {"fault": 0.0, "mitigated": 3.4}}
    stale = dict(good, exercise="power-cut", finished="2025-12-31T00:00:00Z")
    (tmp_path / "kill-node.json").write_text(json.dumps(good))
    (tmp_path / "power-cut.json").write_text(json.dumps(stale))
    rc = chaos.main(["--state-dir", str(tmp_path), "report", "--exercises", "kill-node,power-cut,partition",
                     "--since", "2026-01-01T00:00:00Z"])
    assert rc == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["passed"] for r in report["exercises"]] == [True, False, False]
    table = (tmp_path / "report.md").read_text()
    assert "| kill-node | 1.2 s | health check | 3.4 s | VIP failover | 10 | 9 | 9 | 0 | 0 | pass |" in table
    assert "| partition | - |" in table and "FAIL: no result from this run" in table
    capsys.readouterr()


def test_every_alert_an_exercise_waits_for_exists() -> None:
    rules = set()
    for path in (REPO / "files" / "prometheus" / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules |= {rule["alert"] for rule in group["rules"] if "alert" in rule}
    used = set()
    for path in (REPO / "playbooks" / "chaos").rglob("*.yml"):
        for names in re.findall(r"--alerts (\S+)", path.read_text()):
            used |= set(names.split(","))
    assert used, "no exercise waits for an alert"
    assert used <= rules, f"alerts the exercises wait for but no rule defines: {sorted(used - rules)}"


def test_every_exercise_of_make_chaos_has_a_playbook_with_the_lab_guard() -> None:
    makefile = (REPO / "Makefile").read_text()
    exercises = re.search(r"^CHAOS \?= (.+)$", makefile, re.M).group(1).split()
    for name in exercises:
        text = (REPO / "playbooks" / "chaos" / f"{name}.yml").read_text()
        assert f"chaos_exercise: {name}" in text and "tasks/guard.yml" in text, name


def test_boot_probes_from_the_sender_container_until_a_250(monkeypatch, tmp_path: Path) -> None:
    """boot starts the container, then sends from the sender's container (inventory name + the
    lab prefix) until a message is acknowledged, and records booted and serving."""
    calls: list[list[str]] = []
    answers = iter([1, 1, 0])  # refused twice (still booting), then 250

    def fake_run(argv, **kwargs):
        calls.append(argv)
        code = next(answers) if argv[:2] == ["podman", "exec"] else 0
        return subprocess.CompletedProcess(argv, code, stdout="", stderr="")

    monkeypatch.setattr(chaos.subprocess, "run", fake_run)
    monkeypatch.setattr(chaos.time, "sleep", lambda s: None)
    args = chaos.parser().parse_args(["--state-dir", str(tmp_path), "boot", "kill-node", "--container", "dmx-lab-mx1",
                                      "--address", "10.0.0.11", "--rcpt", "a@b.test"])
    chaos.save_state(args, {"exercise": "kill-node", "tag": "t", "sender": "sender", "events": {"fault": 1.0}})
    assert args.func(args) == 0
    assert calls[0] == ["podman", "start", "dmx-lab-mx1"]
    probes = [c for c in calls if c[:2] == ["podman", "exec"]]
    assert len(probes) == 3 and all(c[2] == chaos.PREFIX + "sender" for c in probes)
    assert "10.0.0.11" in probes[0][-1] and "a@b.test" in probes[0][-1]
    events = chaos.load_state(args)["events"]
    assert events["serving"] >= events["booted"]
