"""The backup MX accepts only valid recipients of the lab domain (550 at RCPT time for unknown
ones, so it never bounces later), refuses to relay anywhere else, and never delivers locally."""

from cluster import ADDRESS, BACKUP, DOMAIN, PRIMARIES, SENDER, VIP, sh

SESSION = """
import smtplib
s = smtplib.SMTP('{host}', 25, timeout=30)
s.ehlo('outside.test')
s.mail('someone@outside.test')
print('unknown', s.rcpt('nobody@{domain}')[0])
s.rset(); s.mail('someone@outside.test')
print('foreign', s.rcpt('victim@foreign.example')[0])
s.rset(); s.mail('someone@outside.test')
print('valid', s.rcpt('test@{domain}')[0])
s.rset(); s.quit()
"""


def test_backup_refuses_unknown_recipients_and_foreign_relay_at_rcpt_time():
    out = sh(SENDER, f"python3 -c \"{SESSION.format(host=ADDRESS[BACKUP], domain=DOMAIN)}\"").stdout
    codes = dict(line.split() for line in out.splitlines())
    print("\n[backup policy] RCPT replies:", codes)
    assert codes["unknown"] == "550", "unknown recipients are refused before any 250 (no backscatter)"
    assert codes["foreign"] == "554", "relay for other domains is refused"
    assert codes["valid"] == "250"


def test_backup_relays_to_the_primaries_and_never_delivers_locally():
    conf = dict(line.split(" = ", 1) for line in sh(BACKUP, "postconf -x relay_domains mydestination "
                                                          "smtp_fallback_relay maximal_queue_lifetime").stdout.splitlines())
    assert DOMAIN in conf["relay_domains"].split(", ") and DOMAIN not in conf["mydestination"].split(", ")
    assert sh(BACKUP, f"postmap -q {DOMAIN} texthash:/etc/postfix/transport").stdout.strip() == f"smtp:[{VIP}]:25"
    assert conf["smtp_fallback_relay"] == ", ".join(f"[{ADDRESS[p]}]:25" for p in PRIMARIES)
    assert int(conf["maximal_queue_lifetime"].rstrip("s")) >= 7 * 86400
    assert sh(BACKUP, "systemctl is-active durable-mx-backup-flush.timer").stdout.strip() == "active"
