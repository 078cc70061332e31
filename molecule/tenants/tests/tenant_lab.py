"""What the tenants tests share: the node, its instances, the lab sinks, and the flood harness.

Everything runs on the one node: senders and sinks on its loopback, so a message's latency
(its 250 at the instance to its arrival at the sink) is read on a single clock, and no lab
Postfix delivers anywhere but a lab sink.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import time
from pathlib import Path

from conftest import MAILCOUNT, node, wait_for

MX = "dmx-tenants-mx"
REPO = Path(__file__).resolve().parents[3]
PLAYBOOK = REPO / "playbooks" / "instances.yml"
MC = "python3 /usr/local/bin/mailcount"
RCPT = {"transactional": "resets@durable-mx.test", "bulk": "load@durable-mx.test"}
PORT = {"transactional": 2526, "bulk": 2527}
# Lab sinks (tests/tools/mailcount.py sink) the instances' transports point at.
SINK_PORT = {"transactional": 2601, "bulk": 2602}
SINK_DELAY = {"transactional": 0.0, "bulk": 0.2}  # the bulk destination is deliberately slow
ARRIVALS = "/srv/sink/{name}.jsonl"


def mx():
    return node(MX)


def filter_plugin(name: str):
    """The module of one of our filters (plugins/filter/NAME.py), to compute what a test expects."""
    spec = importlib.util.spec_from_file_location(name, REPO / "plugins" / "filter" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def install_mailcount() -> None:
    subprocess.run(["podman", "cp", str(MAILCOUNT), f"{MX}:/usr/local/bin/mailcount"], check=True)


def start_sinks() -> None:
    """Start the two lab sinks (transient units dmx-sink-NAME) unless they run."""
    install_mailcount()
    host = mx()
    host.check_output("mkdir -p /srv/sink")
    for name in SINK_PORT:
        if host.run(f"systemctl is-active dmx-sink-{name}").stdout.strip() == "active":
            continue
        host.check_output(
            f"systemd-run --quiet --collect --unit dmx-sink-{name} {MC} sink --listen 127.0.0.1:{SINK_PORT[name]} "
            f"--dir /srv/sink/{name} --log {ARRIVALS.format(name=name)} --delay {SINK_DELAY[name]}")
        wait_for(lambda: host.socket(f"tcp://127.0.0.1:{SINK_PORT[name]}").is_listening, 30, f"sink {name}")


def stop_sink(name: str) -> None:
    mx().check_output(f"systemctl stop dmx-sink-{name}")


def arrivals(name: str) -> int:
    return int(mx().run(f"cat {ARRIVALS.format(name=name)} 2>/dev/null | wc -l").stdout.strip() or 0)


def send(name: str, tag: str, count: int, interval: float = 0.0, parallel: int = 1, background: bool = False) -> str:
    """Send COUNT messages to instance NAME; returns the record file (JSON lines) on the node."""
    out = f"/tmp/{tag}.jsonl"
    command = (f"{MC} send --host 127.0.0.1 --port {PORT[name]} --count {count} --parallel {parallel} "
               f"--interval {interval} --rcpt {RCPT[name]} --tag {tag} --timeout 30 --out {out}")
    if background:
        mx().check_output(f"rm -f {out}; systemd-run --quiet --collect --unit mc-{tag} "
                          f"--property=StandardOutput=file:/tmp/{tag}.log --property=Nice=10 {command}")
    else:
        mx().check_output(command)
    return out


def wait_sent(tag: str, timeout: float = 300) -> None:
    wait_for(lambda: mx().run(f"systemctl is-active mc-{tag}").stdout.strip() != "active", timeout,
             f"sender {tag} to finish", 1)


def latency(name: str, *records: str) -> dict:
    args = " ".join(f"--acks {r}" for r in records)
    out = mx().check_output(f"{MC} latency {args} --arrivals {ARRIVALS.format(name=name)}")
    return json.loads(out.strip().splitlines()[-1])


def delivered_all(name: str, *records: str) -> bool:
    figures = latency(name, *records)
    return figures["missing"] == 0 and figures["delivered"] == figures["acked"] > 0


def master_pid(instance: str) -> str:
    return mx().check_output(f"cat /var/spool/{instance}/pid/master.pid").strip()


def journal_cursor() -> str:
    return json.loads(mx().check_output("journalctl -n 1 -o json --no-pager"))["__CURSOR"]


def reloads_since(cursor: str, instance: str) -> int:
    """Reloads the instance's master logged since the cursor ("INSTANCE/master[PID]: reload -- version ...").

    Filtered here: journalctl 252 prints nothing for --after-cursor combined with a match (-t).
    """
    text = mx().run(f"journalctl --after-cursor '{cursor}' -q --no-pager -o short").stdout
    return len(re.findall(rf" {re.escape(instance)}/master\[\d+\]: reload ", text))


def config_sums(instance: str) -> str:
    return mx().check_output(f"sha256sum /etc/{instance}/main.cf /etc/{instance}/master.cf")


def untouched_state(instance: str) -> dict:
    return {"pid": master_pid(instance), "config": config_sums(instance),
            "active_since": mx().check_output(f"systemctl show -p ActiveEnterTimestamp --value postfix@{instance}")}


def run_instances_playbook(instances: list) -> subprocess.CompletedProcess:
    """Run playbooks/instances.yml (role postfix_instances) with this declaration."""
    extra = json.dumps({"postfix_instances_list": instances})
    result = subprocess.run(["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(PLAYBOOK), "-e", extra],
                            capture_output=True, text=True)
    print(result.stdout[-3000:])
    return result


def declared_instances() -> list:
    """The declaration of the scenario's host_vars (what converge applied)."""
    import yaml
    path = Path(__file__).resolve().parents[1] / "host_vars" / f"{MX}.yml"
    return yaml.safe_load(path.read_text())["postfix_instances_list"]


def elapsed(start: float) -> str:
    return f"{time.monotonic() - start:.0f} s"
