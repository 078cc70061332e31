"""A configuration Postfix rejects never reaches the live files, and the MTA keeps working."""

import json
import os
import subprocess
from pathlib import Path

from conftest import node

SCENARIO = Path(__file__).resolve().parents[1]
MX = "dmx-durable-mx"


def _run_postfix_role(extra_vars: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"],
         str(SCENARIO / "playbooks" / "postfix.yml"), "-e", json.dumps(extra_vars)],
        capture_output=True, text=True,
    )


def _smtp_accepts(client) -> bool:
    script = f"""
import smtplib
s = smtplib.SMTP('{MX}', 25, timeout=30)
s.ehlo('outside.test')
s.sendmail('someone@outside.test', ['resets@durable-mx.test'], b'Subject: still up\\r\\n\\r\\nyes\\r\\n')
print('ok')
"""
    return client.run("python3 -c %s", script).stdout.strip() == "ok"


def test_value_postfix_rejects_fails_the_play_and_changes_nothing():
    mx = node(MX)
    before = mx.check_output("sha256sum /etc/postfix/main.cf")
    master_pid = mx.check_output("cat /var/spool/postfix/pid/master.pid").strip()
    result = _run_postfix_role({"postfix_parameters": [{"name": "default_process_limit", "value": "many"}]})
    print(result.stdout[-2500:])
    assert result.returncode != 0
    assert "Postfix rejected the rendered main.cf" in result.stdout
    assert "default_process_limit = many" in result.stdout, "the message names the offending value"
    assert mx.check_output("sha256sum /etc/postfix/main.cf") == before
    assert mx.check_output("cat /var/spool/postfix/pid/master.pid").strip() == master_pid, "Postfix was restarted"
    assert mx.service("postfix@-").is_running
    assert _smtp_accepts(node("dmx-durable-client"))


def test_invalid_role_variable_is_rejected_by_argument_specs():
    mx = node(MX)
    before = mx.check_output("sha256sum /etc/postfix/main.cf")
    result = _run_postfix_role({"postfix_message_size_limit": "ten megabytes"})
    print(result.stdout[-1500:])
    assert result.returncode != 0
    assert "postfix_message_size_limit" in result.stdout
    assert "Validating arguments against arg spec" in result.stdout
    assert mx.check_output("sha256sum /etc/postfix/main.cf") == before
