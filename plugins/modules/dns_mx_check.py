#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: durable-mx contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: does the MX set a domain publishes match the inventory?"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: dns_mx_check
short_description: Compare the MX records a mail domain publishes with the expected set
description:
  - Asks each of O(nameservers) directly (recursion not desired) for the domain's MX records
    and for the A records of every exchange, and compares them with O(expected_mx) and O(vip) -
    preferences and exchanges, each exchange's addresses, and that the VIP's name resolves to
    exactly the VIP address and is the exchange tried first.
  - Reports every difference as drift (kind, name, expected, found, message), per name server;
    also an answer without the AA flag (the server does not serve the zone), a server that
    offers recursion, and queries without a usable answer.
  - Read-only; never changes anything (C(changed) is always false); safe in check mode. Fails
    only when O(fail_on_drift) is true and there is drift.
  - Needs the C(dnspython) Python library where it runs (C(requirements.txt) on the
    controller, C(python3-dnspython) on a Debian node).
options:
  domain:
    description: The mail domain whose MX set is checked.
    type: str
    required: true
  nameservers:
    description: Addresses of the name servers to ask, each separately (the domain's authoritative servers).
    type: list
    elements: str
    required: true
  port:
    description: DNS port of the name servers.
    type: int
    default: 53
  timeout:
    description: Seconds to wait for each answer.
    type: float
    default: 3.0
  expected_mx:
    description: The MX records the domain must publish, and nothing else.
    type: list
    elements: dict
    required: true
    suboptions:
      preference:
        description: MX preference (lower is tried first).
        type: int
        required: true
      exchange:
        description: Host name of the exchange.
        type: str
        required: true
      addresses:
        description: Addresses its A records must hold exactly; empty skips the address comparison.
        type: list
        elements: str
        default: []
  vip:
    description: The primaries' virtual IP, published under a name that must be the first MX.
    type: dict
    suboptions:
      name:
        description: Host name of the VIP (one of the exchanges).
        type: str
        required: true
      address:
        description: The VIP address; the name must resolve to it alone.
        type: str
        required: true
  fail_on_drift:
    description: Fail the task when there is drift (otherwise only report it).
    type: bool
    default: false
author:
  - durable-mx contributors
"""

EXAMPLES = r"""
- name: Check the published MX set against the inventory
  dns_mx_check:
    domain: durable-mx.test
    nameservers: [10.89.200.10]
    expected_mx:
      - {preference: 10, exchange: mx.durable-mx.test, addresses: [10.89.200.250]}
      - {preference: 20, exchange: backup-mx.lab.durable-mx.test, addresses: [10.89.200.13]}
    vip: {name: mx.durable-mx.test, address: 10.89.200.250}
    fail_on_drift: true
  delegate_to: localhost
"""

RETURN = r"""
in_sync:
  description: True when no name server shows any drift.
  type: bool
  returned: always
drift:
  description: Every difference, with the name server that showed it.
  type: list
  elements: dict
  returned: always
  sample:
    - nameserver: 10.89.200.10
      kind: address
      name: backup-mx.lab.durable-mx.test
      expected: [10.89.200.13]
      found: [10.89.200.99]
      message: backup-mx.lab.durable-mx.test A is ['10.89.200.99'], expected ['10.89.200.13']
published:
  description: What each name server publishes, by name server address.
  type: dict
  returned: always
  sample:
    10.89.200.10:
      mx: [{preference: 10, exchange: mx.durable-mx.test}]
      addresses: {mx.durable-mx.test: [10.89.200.250]}
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.dns_mx import check_domain, dnspython_query

try:
    import dns.message  # noqa: F401  (presence check; the queries import it again)
    HAS_DNSPYTHON = True
    DNSPYTHON_ERROR = None
except ImportError:
    HAS_DNSPYTHON = False
    DNSPYTHON_ERROR = traceback.format_exc()


def run(params, make_query=dnspython_query):
    """The module's work without AnsibleModule: returns the result dict."""
    drift = []
    published = {}
    for nameserver in params["nameservers"]:
        query = make_query(nameserver, params["port"], params["timeout"])
        result = check_domain(query, params["domain"], params["expected_mx"], params.get("vip"))
        published[nameserver] = result["published"]
        drift.extend(dict(item, nameserver=nameserver) for item in result["drift"])
    return {"changed": False, "in_sync": not drift, "drift": drift, "published": published}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            domain=dict(type="str", required=True),
            nameservers=dict(type="list", elements="str", required=True),
            port=dict(type="int", default=53),
            timeout=dict(type="float", default=3.0),
            expected_mx=dict(type="list", elements="dict", required=True, options=dict(
                preference=dict(type="int", required=True),
                exchange=dict(type="str", required=True),
                addresses=dict(type="list", elements="str", default=[]),
            )),
            vip=dict(type="dict", options=dict(
                name=dict(type="str", required=True),
                address=dict(type="str", required=True),
            )),
            fail_on_drift=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    if not HAS_DNSPYTHON:
        module.fail_json(msg=missing_required_lib("dnspython"), exception=DNSPYTHON_ERROR)
    if not module.params["nameservers"]:
        module.fail_json(msg="nameservers is empty: give the addresses of the domain's authoritative name servers")
    result = run(module.params)
    if result["drift"] and module.params["fail_on_drift"]:
        module.fail_json(msg="DNS drift for %s: %s" % (module.params["domain"],
                                                         "; ".join("%s: %s" % (d["nameserver"], d["message"])
                                                                   for d in result["drift"])), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
