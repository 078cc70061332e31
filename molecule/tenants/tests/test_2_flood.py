"""A bulk flood does not delay transactional mail.

Transactional mail (one message every 100 ms) is timed from its 250 at postfix-transactional to
its arrival at the transactional sink, first alone, then while 1,000 bulk messages flood
postfix-bulk towards a deliberately slow sink (0.2 s per message). Every message of both must be
delivered. The latency figures are printed, not asserted: the timing target (p99 ratio <= 1.5,
5,000 bulk messages) is measured by bench/tenants.py.
"""

import time

import pytest

from conftest import wait_for
from tenant_lab import arrivals, delivered_all, latency, send, start_sinks, wait_sent

BULK = 1000
SECONDS = 20


@pytest.fixture(scope="module", autouse=True)
def sinks():
    start_sinks()


def test_bulk_flood_leaves_transactional_latency_alone():
    before = {name: arrivals(name) for name in ("transactional", "bulk")}
    alone = send("transactional", "alone", 10 * SECONDS // 2, interval=0.1)

    start = time.monotonic()
    flood = send("bulk", "flood", BULK, parallel=4, background=True)
    during = send("transactional", "during", 10 * SECONDS, interval=0.1)
    wait_sent("flood")
    wait_for(lambda: delivered_all("bulk", flood), 300, f"all {BULK} bulk messages at the slow sink", 2)
    drained = time.monotonic() - start
    wait_for(lambda: delivered_all("transactional", alone, during), 60, "every transactional message at its sink", 1)

    base, flooded, bulk = latency("transactional", alone), latency("transactional", during), latency("bulk", flood)
    print(f"\ntransactional alone:        sent={base['sent']} acked={base['acked']} delivered={base['delivered']} "
          f"p50={base['p50_ms']} ms p99={base['p99_ms']} ms")
    print(f"transactional during flood: sent={flooded['sent']} acked={flooded['acked']} delivered={flooded['delivered']} "
          f"p50={flooded['p50_ms']} ms p99={flooded['p99_ms']} ms")
    print(f"bulk flood: sent={bulk['sent']} acked={bulk['acked']} delivered={bulk['delivered']} "
          f"(all at the slow sink {drained:.0f} s after the flood began)")
    print(f"ratios (flood / alone): p50 {flooded['p50_ms'] / base['p50_ms']:.2f}, p99 {flooded['p99_ms'] / base['p99_ms']:.2f}"
          " (printed only; bench/tenants.py measures the target)")
    for figures in (base, flooded, bulk):
        assert figures["acked"] == figures["sent"] and figures["missing"] == 0, figures["missing_ids"]
    assert bulk["delivered"] == BULK
    assert arrivals("bulk") - before["bulk"] == BULK, "each bulk message arrived once"
