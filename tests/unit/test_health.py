"""durable-mx-health (roles/postfix/files): the check keepalived runs and the guard that fences.

A fake instance: a process named master with a qmgr child, a queue directory in tmp_path and an
SMTP listener on loopback. Storage failures are simulated with a dd on PATH that fails the way
GNU dd does on a dead filesystem; systemctl and logger are fakes that record their arguments.
The real failure (XFS shut down under a running Postfix) is tested in molecule/cluster.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT

HEALTH = ROOT / "roles" / "postfix" / "files" / "durable-mx-health"


def _smtp_server(banner: bytes = b"220 fake ESMTP\r\n") -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.sendall(banner)
                data = b""
                while b"\n" not in data:
                    chunk = conn.recv(1024)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(b"250-fake\r\n250 8BITMIME\r\n")

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


@pytest.fixture
def instance(tmp_path: Path):
    """A running fake instance: master (with a qmgr child), its pid file, its health description."""
    queue = tmp_path / "spool"
    (queue / "pid").mkdir(parents=True)
    (queue / ".durable-mx-health").mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    qmgr = bindir / "qmgr"
    qmgr.write_bytes(Path("/bin/sleep").read_bytes())
    qmgr.chmod(0o755)
    master = bindir / "master"
    master.write_text(f"#!/bin/bash\n{qmgr} 60 &\nwait\n")
    master.chmod(0o755)
    proc = subprocess.Popen([str(master)])
    (queue / "pid" / "master.pid").write_text(f"{proc.pid:>10}\n")
    srv, port = _smtp_server()
    conf = tmp_path / "health.d"
    conf.mkdir()
    (conf / "postfix.conf").write_text(
        f"name=postfix\nunit=postfix@-.service\nqueue={queue}\nsmtp_host=127.0.0.1\nsmtp_port={port}\n")
    deadline = time.time() + 5
    while not (Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()) and time.time() < deadline:
        time.sleep(0.05)
    yield {"tmp": tmp_path, "queue": queue, "conf": conf, "port": port, "proc": proc}
    srv.close()
    _kill_children(proc.pid)
    proc.kill()
    proc.wait()


def _kill_children(pid: int) -> None:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for child in (children.read_text().split() if children.exists() else []):
        os.kill(int(child), 9)


def _fakes(tmp_path: Path, dd_error: str | None) -> Path:
    """A bin directory with systemctl and logger that record their arguments, and optionally a dd that fails."""
    fakes = tmp_path / "fakes"
    fakes.mkdir(exist_ok=True)
    for name in ("systemctl", "logger"):
        script = fakes / name
        script.write_text(f'#!/bin/bash\necho "$*" >> {tmp_path}/{name}.calls\n')
        script.chmod(0o755)
    if dd_error:
        dd = fakes / "dd"
        dd.write_text(f"#!/bin/bash\necho \"dd: failed to open 'x': {dd_error}\" >&2\nexit 1\n")
        dd.chmod(0o755)
    return fakes


def _run(inst, *args: str, dd_error: str | None = None, timeout: float = 10) -> subprocess.CompletedProcess:
    env = dict(os.environ, DMX_HEALTH_CONF_DIR=str(inst["conf"]), DMX_HEALTH_STATE_DIR=str(inst["tmp"] / "state"),
               PATH=f"{_fakes(inst['tmp'], dd_error)}:{os.environ['PATH']}")
    return subprocess.run(["bash", str(HEALTH), *args], capture_output=True, text=True, env=env, timeout=timeout)


def _guard(inst, dd_error: str | None, seconds: float = 2.5) -> dict[str, str]:
    """Run the guard for a few probes; its last state of the instance."""
    env = dict(os.environ, DMX_HEALTH_CONF_DIR=str(inst["conf"]), DMX_HEALTH_STATE_DIR=str(inst["tmp"] / "state"),
               PATH=f"{_fakes(inst['tmp'], dd_error)}:{os.environ['PATH']}")
    proc = subprocess.Popen(["bash", str(HEALTH), "--guard", "--interval", "0.5", "--timeout", "1"], env=env)
    time.sleep(seconds)
    proc.kill()
    proc.wait()
    text = (inst["tmp"] / "state" / "postfix.state").read_text()
    return dict(line.split("=", 1) for line in text.splitlines())


def test_a_healthy_instance_passes_and_leaves_no_probe_file(instance):
    result = _run(instance, "--timeout", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("postfix: ok (master ") and "write+fsync" in result.stdout
    assert list((instance["queue"] / ".durable-mx-health").iterdir()) == []


def test_an_unknown_instance_fails_and_names_it(instance):
    result = _run(instance, "--timeout", "1", "bulk")
    assert result.returncode == 1 and "bulk: unknown instance" in result.stdout


def test_a_dead_master_fails(instance):
    instance["proc"].kill()
    instance["proc"].wait()
    result = _run(instance, "--timeout", "1")
    assert result.returncode == 1 and "FAIL master not running" in result.stdout


def test_a_master_without_qmgr_fails(instance):
    _kill_children(instance["proc"].pid)
    time.sleep(0.2)
    result = _run(instance, "--timeout", "1")
    assert result.returncode == 1 and "qmgr not running" in result.stdout


def test_a_failing_write_fails_the_check(instance):
    result = _run(instance, "--timeout", "1", dd_error="Input/output error")
    assert result.returncode == 1 and "Input/output error" in result.stdout


def test_an_smtp_listener_that_says_nothing_fails_within_the_timeout(instance):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    conf = instance["conf"] / "postfix.conf"
    conf.write_text(conf.read_text().replace(f"smtp_port={instance['port']}", f"smtp_port={silent.getsockname()[1]}"))
    start = time.monotonic()
    result = _run(instance, "--timeout", "1")
    elapsed = time.monotonic() - start
    silent.close()
    assert result.returncode == 1 and "SMTP 127.0.0.1" in result.stdout
    assert elapsed < 4, elapsed


@pytest.mark.parametrize("error", ["Input/output error", "Read-only file system"])
def test_the_guard_fences_an_instance_whose_volume_fails(instance, error):
    state = _guard(instance, error)
    assert state["status"] == "failed" and error in state["error"] and state["fenced_at"]
    calls = (instance["tmp"] / "systemctl.calls").read_text().splitlines()
    assert calls == ["kill --signal=SIGKILL postfix@-.service"], calls  # once, not at every probe
    assert "fenced postfix@-.service" in (instance["tmp"] / "logger.calls").read_text()


def test_the_check_fences_before_it_fails_when_asked(instance):
    """keepalived's check (--fence) ends the sessions before the VIP leaves: else they hang half-open."""
    result = _run(instance, "--timeout", "1", "--fence", dd_error="Input/output error")
    assert result.returncode == 1 and "(fenced)" in result.stdout, result.stdout
    calls = (instance["tmp"] / "systemctl.calls").read_text().splitlines()
    assert calls == ["kill --signal=SIGKILL postfix@-.service"], calls
    assert (instance["tmp"] / "state" / "postfix.fenced").exists()
    # The guard sees the same fence and does not kill again.
    state = _guard(instance, "Input/output error")
    assert state["fenced_at"] and (instance["tmp"] / "systemctl.calls").read_text().splitlines() == calls


def test_the_check_does_not_fence_unless_asked(instance):
    result = _run(instance, "--timeout", "1", dd_error="Input/output error")
    assert result.returncode == 1 and "(fenced)" not in result.stdout
    assert not (instance["tmp"] / "systemctl.calls").exists()


def test_the_guard_does_not_fence_a_full_volume(instance):
    state = _guard(instance, "No space left on device")
    assert state["status"] == "failed" and not state["fenced_at"]
    assert not (instance["tmp"] / "systemctl.calls").exists()


def test_the_guard_records_a_healthy_instance_and_writes_nothing_while_it_is_stopped(instance):
    assert _guard(instance, None)["status"] == "ok"
    instance["proc"].kill()
    instance["proc"].wait()
    probe_dir = instance["queue"] / ".durable-mx-health"
    before = probe_dir.stat().st_mtime_ns
    state = _guard(instance, None)
    assert state["status"] == "stopped" and not state["fenced_at"]
    assert probe_dir.stat().st_mtime_ns == before  # the stop seal stays valid
    assert not (instance["tmp"] / "systemctl.calls").exists()
