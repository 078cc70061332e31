"""Postfix runs with the settings that carry the durability promise, and its policy holds."""

from conftest import node

DOMAIN = "durable-mx.test"
MX = "dmx-durable-mx"


def test_postfix_runs_and_listens(group):
    for mx in group("mx"):
        assert mx.service("postfix@-").is_running
        assert mx.socket("tcp://0.0.0.0:25").is_listening
        # postfix check prints nothing when files, permissions and config are clean.
        result = mx.run("postfix check")
        assert result.rc == 0 and result.stdout + result.stderr == ""


def test_durability_settings(group):
    for mx in group("mx"):
        conf = dict(line.split(" = ", 1) for line in mx.check_output("postconf -n").splitlines())
        assert conf["queue_directory"] == "/var/spool/postfix"
        assert conf["enable_long_queue_ids"] == "yes"
        assert conf["hash_queue_depth"] == "2"
        assert "deferred" in conf["hash_queue_names"]
        assert conf["milter_default_action"] == "quarantine"
        assert int(conf["queue_minfree"]) >= 1.5 * int(conf["message_size_limit"])
        for name in ("minimal_backoff_time", "maximal_backoff_time", "queue_run_delay",
                     "maximal_queue_lifetime", "bounce_queue_lifetime", "delay_warning_time", "in_flow_delay",
                     "smtpd_client_connection_count_limit", "smtpd_client_connection_rate_limit"):
            assert name in conf, name
        assert mx.check_output("postconf -M smtp/inet").split()[4] == "y", "smtpd runs chrooted"


def _client_session(client, script: str) -> str:
    return client.check_output("python3 -c %s", script)


def test_security_policy_from_an_outside_client():
    client = node("dmx-durable-client")
    script = f"""
import smtplib, ssl
s = smtplib.SMTP('{MX}', 25, timeout=30)
s.ehlo('outside.test')
print('starttls-offered', s.has_extn('starttls'))
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
print('starttls', s.starttls(context=ctx)[0])
s.ehlo('outside.test')
s.mail('someone@outside.test')
print('relay', s.rcpt('victim@foreign.example')[0])
s.rset(); s.mail('someone@outside.test')
print('unknown', s.rcpt('nobody@{DOMAIN}')[0])
s.rset()
print('oversize-size', s.mail('someone@outside.test', ['SIZE=20000000'])[0])
s.rset(); s.mail('someone@outside.test'); s.rcpt('invoices@{DOMAIN}')
try:
    print('oversize-data', s.data(b'Subject: big\\r\\n\\r\\n' + (b'x' * 998 + b'\\r\\n') * 11000)[0])
except smtplib.SMTPDataError as e:
    print('oversize-data', e.smtp_code)
"""
    out = dict(line.split(" ", 1) for line in _client_session(client, script).splitlines())
    print(out)
    assert out["starttls-offered"] == "True"
    assert out["starttls"] == "220"
    assert out["relay"] == "554", "relay for a foreign domain must be refused"
    assert out["unknown"] == "550", "unknown recipients are refused before 250 (no backscatter)"
    assert out["oversize-size"] == "552", "a declared oversize message is refused at MAIL"
    assert out["oversize-data"] == "552"


def test_valid_recipient_is_accepted_and_queued():
    client = node("dmx-durable-client")
    mx = node(MX)
    script = f"""
import smtplib
s = smtplib.SMTP('{MX}', 25, timeout=30)
s.ehlo('outside.test')
print(s.sendmail('someone@outside.test', ['invoices@{DOMAIN}'], b'Subject: hi\\r\\n\\r\\nhello\\r\\n'))
print(s.noop()[0])
"""
    client.check_output("python3 -c %s", script)
    assert '"address": "invoices@durable-mx.test"' in mx.check_output("postqueue -j")
