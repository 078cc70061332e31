"""Once Postfix said 250, the message survives: kill -9, a power cut, a nearly full disk.

Every test counts messages: sent, acknowledged (250 with a queue ID), then present and intact
in the queue afterwards (postcat reads it and the body hash matches). lost and corrupt must be 0.
A deliberately unsafe receiver (250 before fsync) run through the same harness must lose mail,
which shows the harness can catch a loss.
"""

import json

from conftest import copy_between, json_out, node, wait_for

MX = "dmx-durable-mx"
CLIENT = "dmx-durable-client"
RCPT = "load@durable-mx.test"
QUEUE = "/var/spool/postfix"


def start_sending(mc: str, tag: str, count: int, parallel: int = 4, port: int = 25, size: int = 2048,
                  delay: float = 0.01) -> str:
    """Send in the background on the client, as a transient systemd unit mc-TAG."""
    out = f"/tmp/{tag}.jsonl"
    node(CLIENT).check_output(
        f"rm -f {out}; systemd-run --quiet --collect --unit mc-{tag} "
        f"--property=StandardOutput=file:/tmp/{tag}.log {mc} send --host {MX} --port {port} "
        f"--count {count} --parallel {parallel} --size {size} --delay {delay} --timeout 10 "
        f"--rcpt {RCPT} --tag {tag} --out {out}"
    )
    return out


def acks(out: str) -> int:
    return int(node(CLIENT).run(f"grep -c '\"code\": 250' {out}").stdout.strip() or 0)


def wait_sent(tag: str, timeout: float = 240) -> None:
    wait_for(lambda: node(CLIENT).run(f"systemctl is-active mc-{tag}").stdout.strip() != "active",
             timeout, f"sender {tag} to finish")


def kill_postfix() -> None:
    """SIGKILL every process of the Postfix unit at once, as a crash or power loss would."""
    mx = node(MX)
    mx.run("systemctl kill --signal=SIGKILL postfix@-.service")
    wait_for(lambda: mx.run("systemctl is-active postfix@-.service").stdout.strip() != "active", 30, "Postfix to die")
    mx.check_output("systemctl reset-failed postfix@-.service postfix.service || true")


def check_in_queue(mc: str, out: str) -> dict:
    copy_between(CLIENT, out, MX, out)
    return json_out(node(MX), f"{mc} check-postfix --acks {out}")


def report(name: str, figures: dict) -> None:
    shown = {k: v for k, v in figures.items() if k != "missing_ids"}
    print(f"\n{name}: " + ", ".join(f"{k}={v}" for k, v in shown.items()))


def test_kill_9_during_inflow_loses_nothing(mailcount):
    mc = mailcount(CLIENT)
    mailcount(MX)
    out = start_sending(mc, "kill9", 600)
    wait_for(lambda: acks(out) >= 150, 120, "150 acknowledged messages")
    kill_postfix()
    wait_sent("kill9")
    node(MX).check_output("systemctl start postfix")
    figures = check_in_queue(mc, out)
    report("kill -9 of every Postfix process", figures)
    assert figures["acked"] >= 150
    assert figures["lost"] == 0 and figures["corrupt"] == 0, figures["missing_ids"]


def test_power_cut_loses_no_acknowledged_message(mailcount):
    mc = mailcount(CLIENT)
    mx = node(MX)
    out = start_sending(mc, "powercut", 1000)
    wait_for(lambda: acks(out) >= 300, 120, "300 acknowledged messages")
    # Pull the plug: the filesystem stops without flushing its log (what was not on disk is
    # gone) and every Postfix process dies with it.
    mx.check_output(f"xfs_io -x -c shutdown {QUEUE}")
    kill_postfix()
    # A power cut stops every process. The exporter's sandbox (a private mount namespace) holds
    # the queue filesystem too: while it lives, a new mount reattaches the shut-down filesystem
    # instead of recovering it from its log.
    mx.check_output("systemctl stop durable-mx-exporter")
    wait_sent("powercut")
    mx.check_output(f"umount {QUEUE} && mount {QUEUE}")
    mx.check_output("systemctl start postfix durable-mx-exporter")
    figures = check_in_queue(mc, out)
    report("power cut (xfs shutdown without log flush)", figures)
    assert figures["sent"] == 1000
    assert figures["acked"] >= 300
    assert figures["lost"] == 0 and figures["corrupt"] == 0, figures["missing_ids"]


def test_harness_catches_an_unsafe_receiver(mailcount):
    """The same send / cut / count harness against a receiver that answers 250 before fsync."""
    mc = mailcount(CLIENT)
    mx = node(MX)
    mx.check_output("umount /srv/unsafe 2>/dev/null; mkfs.xfs -q -f /dev/vdc && mkdir -p /srv/unsafe && mount /dev/vdc /srv/unsafe")
    mx.check_output(f"systemd-run --quiet --collect --unit unsafe-sink {mc} sink --listen 0.0.0.0:2525 "
                    "--dir /srv/unsafe/mail --no-fsync")
    wait_for(lambda: mx.socket("tcp://0.0.0.0:2525").is_listening, 30, "the unsafe sink to listen")
    out = start_sending(mc, "unsafe", 1000, port=2525)
    wait_for(lambda: acks(out) >= 300, 120, "300 acknowledged messages")
    mx.check_output("xfs_io -x -c shutdown /srv/unsafe")
    wait_sent("unsafe")
    mx.check_output("systemctl kill --signal=SIGKILL unsafe-sink.service")
    wait_for(lambda: mx.run("systemctl is-active unsafe-sink.service").stdout.strip() != "active", 30, "the sink to stop")
    mx.check_output("umount /srv/unsafe && mount /dev/vdc /srv/unsafe")
    copy_between(CLIENT, out, MX, out)
    figures = json_out(mx, f"{mc} check-dir --acks {out} --dir /srv/unsafe/mail")
    report("unsafe receiver (250 before fsync), same power cut", figures)
    mx.check_output("umount /srv/unsafe")
    assert figures["acked"] >= 300
    assert figures["lost"] > 0, "the harness must detect the loss of acknowledged messages"


def test_nearly_full_queue_volume_answers_4xx_and_keeps_what_it_acked(mailcount):
    mc = mailcount(CLIENT)
    mx = node(MX)
    minfree = int(mx.check_output("postconf -h queue_minfree"))
    free = int(mx.check_output(f"df -B1 --output=avail {QUEUE} | tail -1"))
    # Leave 3 MiB above queue_minfree, then send 64 KiB messages: the first few fit, then 452.
    fill = free - minfree - 3 * 1024 * 1024
    mx.check_output(f"fallocate -l {fill} {QUEUE}/durable-mx-test-fill")
    try:
        out = start_sending(mc, "diskfull", 150, parallel=1, size=64 * 1024)
        wait_sent("diskfull")
        records = [json.loads(line) for line in node(CLIENT).file(out).content_string.splitlines()]
        codes = [r["code"] for r in records]
        figures = check_in_queue(mc, out)
        figures["452"] = codes.count(452)
        report("queue volume nearly full", figures)
        assert figures["acked"] > 0, "mail fits while space remains above queue_minfree"
        assert figures["452"] > 0, "clients must get 452 before the disk fills"
        # -1: smtpd hangs up on a client after too many 452s (smtpd_hard_error_limit).
        assert set(codes) <= {250, 452, -1}, f"unexpected replies: {set(codes)}"
        assert figures["lost"] == 0 and figures["corrupt"] == 0, figures["missing_ids"]
    finally:
        mx.check_output(f"rm -f {QUEUE}/durable-mx-test-fill")
    out = start_sending(mc, "afterfull", 5, parallel=1)
    wait_sent("afterfull")
    assert check_in_queue(mc, out)["acked"] == 5, "acceptance resumes once space is back"
