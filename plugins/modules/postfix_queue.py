#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: durable-mx contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: hold, release, requeue, delete or expire selected queued messages."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: postfix_queue
short_description: Hold, release, requeue, delete or expire selected Postfix messages
description:
  - Selects messages of one Postfix instance by queue, recipient domain, sender, minimum
    age and/or queue IDs (all given selectors must match), then runs one C(postsuper)
    call for the whole selection, feeding the IDs on standard input.
  - Returns exactly the IDs postsuper reports as changed; in check mode, the IDs that
    would be changed.
  - A C(delete) or C(expire) without any selector would touch every message of the
    instance and is refused unless O(confirm) carries the explicit value.
options:
  action:
    description:
      - C(hold) (postsuper -h), C(release) from hold (-H), C(requeue) (-r, re-run through
        cleanup), C(delete) (-d, the message is gone for good), C(expire) (-e, bounce at
        the next delivery attempt; Postfix 3.5 or later).
    type: str
    required: true
    choices: [hold, release, requeue, delete, expire]
  config_dir:
    description: Configuration directory of the Postfix instance.
    type: path
    default: /etc/postfix
  queue:
    description: Only messages in these queues.
    type: list
    elements: str
    choices: [maildrop, incoming, active, deferred, hold, corrupt]
  domain:
    description:
      - Only messages with a pending recipient in this domain (case-insensitive). A
        leading dot (C(.example.com)) also matches subdomains.
    type: str
  sender:
    description:
      - Only messages from this envelope sender (case-insensitive). C(MAILER-DAEMON) or
        an empty string selects bounces (null sender).
    type: str
  min_age:
    description:
      - Only messages that arrived at least this long ago; seconds or a number with a
        unit s, m, h, d, w (C(4h)).
    type: str
  queue_ids:
    description: Only these queue IDs.
    type: list
    elements: str
  confirm:
    description:
      - Needed for C(delete) with no selector (C(yes-delete-all)) or C(expire) with no
        selector (C(yes-expire-all)).
    type: str
author:
  - durable-mx contributors
"""

EXAMPLES = r"""
- name: Hold everything deferred for example.net for more than 4 hours
  postfix_queue:
    action: hold
    queue: [deferred]
    domain: example.net
    min_age: 4h
  register: held

- name: Show what was held
  ansible.builtin.debug:
    var: held.changed_ids

- name: Release it again
  postfix_queue:
    action: release
    queue_ids: "{{ held.changed_ids }}"

- name: Delete every message of a test instance (explicitly confirmed)
  postfix_queue:
    action: delete
    config_dir: /etc/postfix-test
    confirm: yes-delete-all
"""

RETURN = r"""
selected_ids:
  description: IDs that matched the selectors and the queues the action applies to.
  returned: always
  type: list
  elements: str
changed_ids:
  description:
    - IDs postsuper reported as changed; in check mode, the IDs that would be changed
      (equal to selected_ids).
  returned: always
  type: list
  elements: str
  sample: [4jcN492xSVzD03t, 4jcN493CNSzD047]
unchanged_ids:
  description: Selected IDs postsuper did not change (for example delivered meanwhile).
  returned: always
  type: list
  elements: str
command:
  description: The postsuper command line run (IDs went to its standard input).
  returned: always
  type: list
  elements: str
postsuper_output:
  description: What postsuper printed (it reports on standard error).
  returned: when postsuper ran
  type: str
read_errors:
  description: Queue files that could not be read while selecting (path and error).
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.postfix_queue import (ACTIONS, MESSAGE_QUEUES, parse_postsuper_output, postsuper_command,
                                                refuse_unselective, selected_queue_ids)


def run_module() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", required=True, choices=sorted(ACTIONS)),
            config_dir=dict(type="path", default="/etc/postfix"),
            queue=dict(type="list", elements="str", choices=list(MESSAGE_QUEUES)),
            domain=dict(type="str"),
            sender=dict(type="str"),
            min_age=dict(type="str"),
            queue_ids=dict(type="list", elements="str"),
            confirm=dict(type="str", no_log=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    selectors = {k: p[k] for k in ("queue", "domain", "sender", "min_age", "queue_ids")}
    refusal = refuse_unselective(p["action"], selectors, p["confirm"])
    if refusal:
        module.fail_json(msg=refusal)
    applicable = ACTIONS[p["action"]][1]
    queues = [q for q in (p["queue"] or applicable) if q in applicable]
    try:
        selected, errors = selected_queue_ids(p["config_dir"], queues, domain=p["domain"], sender=p["sender"],
                                              min_age=p["min_age"], queue_ids=p["queue_ids"])
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    cmd = postsuper_command(p["action"], p["config_dir"])
    result = dict(selected_ids=selected, command=cmd, read_errors=errors)
    if not selected or module.check_mode:
        module.exit_json(changed=bool(selected), changed_ids=selected, unchanged_ids=[], **result)

    rc, out, err = module.run_command(cmd, data="\n".join(selected) + "\n")
    changed = parse_postsuper_output(err + "\n" + out)
    result.update(changed_ids=changed, unchanged_ids=sorted(set(selected) - set(changed)),
                  postsuper_output=err + out)
    if rc != 0:
        module.fail_json(msg="%s failed (rc=%d): %s" % (" ".join(cmd), rc, err.strip()), **result)
    module.exit_json(changed=bool(changed), **result)


def main() -> None:
    run_module()


if __name__ == "__main__":
    main()
