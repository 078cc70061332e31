"""Both primaries down: the outside sender falls back to MX 20 by itself, the backup keeps the mail,
and when the primaries return everything reaches the sink. Lost = 0; duplicates are counted."""

import time

from cluster import (BACKUP, PRIMARIES, SENDER, acked, figures, postfix, queue_count, send, sh, sink_counts,
                     vip_holders, wait_delivered, wait_single_holder)
from conftest import wait_for


def test_backup_buffers_while_both_primaries_are_down_and_hands_back():
    wait_single_holder()
    tag = f"outage{int(time.time())}"

    down_at = time.time()
    for name in PRIMARIES:
        postfix(name, "stop")
    # Both nodes fail their SMTP check and enter FAULT: nobody holds the VIP.
    vip_gone = wait_for(lambda: vip_holders() == [], 15, "the VIP to be released by both primaries", interval=0.1)

    records = send("127.0.0.1", tag, 60, parallel=2)
    assert len(acked(records)) == 60, "the outside sender's Postfix accepts everything"

    # The sender delivers to MX 20 by itself: its queue empties, the backup holds the mail.
    wait_for(lambda: queue_count(SENDER) == 0, 120, "the sender to hand everything to the backup MX", interval=1.0)
    wait_for(lambda: queue_count(BACKUP) >= 60, 60, "60 messages queued on the backup MX", interval=1.0)
    held = queue_count(BACKUP)
    assert sink_counts(tag) == {}, "nothing can reach the sink while both primaries are down"
    log = sh(SENDER, f"journalctl -q --no-pager -u postfix@- --since '@{int(down_at)}'").stdout
    fallback_relays = log.count(f"relay={BACKUP}.lab.durable-mx.test[")

    back_at = time.time()
    for name in PRIMARIES:
        postfix(name, "start")
    holder = wait_single_holder()
    vip_back = time.time() - back_at
    counts = wait_delivered(records, tag, timeout=120)
    handed_back = time.time() - back_at
    flush_log = sh(BACKUP, f"journalctl -q --no-pager -u durable-mx-backup-flush --since '@{int(back_at)}'").stdout

    result = figures("both primaries down, backup MX", records, counts, queued_on_backup=held,
                     sender_relays_to_backup=fallback_relays, vip_released_after=f"{vip_gone:.1f}s",
                     vip_back_after=f"{vip_back:.1f}s", all_at_sink_after=f"{handed_back:.1f}s", vip_holder=holder)
    print("[backup hand-back]", [line for line in flush_log.splitlines() if "asked Postfix" in line] or "(by retry)")
    assert held >= 60 and fallback_relays >= 1
    assert result["lost"] == 0 and result["delivered"] == 60
    wait_for(lambda: queue_count(BACKUP) == 0, 60, "the backup MX queue to empty", interval=1.0)
