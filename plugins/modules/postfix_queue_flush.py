#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: durable-mx contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: ask Postfix to retry selected deferred messages now."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: postfix_queue_flush
short_description: Retry selected deferred Postfix messages now
description:
  - Selects deferred messages of one instance by recipient domain, sender, minimum age and/or
    queue IDs (all given selectors must match) and schedules each for immediate delivery with
    C(postqueue -i). With O(all) and no selector, runs C(postqueue -f) (every queued message).
  - A flush never bypasses routing. It does bypass C(defer_transports) and the retry backoff,
    which is why the runbooks suspend a destination with the C(retry) transport (a flushed
    message goes to C(retry) and is deferred again, without any connection), never with
    C(defer_transports).
  - C(changed) when at least one message was scheduled; in check mode, what would be.
options:
  config_dir:
    description: Configuration directory of the Postfix instance.
    type: path
    default: /etc/postfix
  domain:
    description: Only messages with a pending recipient in this domain; C(.example.net) also matches subdomains.
    type: str
  sender:
    description: Only messages from this envelope sender (C(MAILER-DAEMON) or an empty string for bounces).
    type: str
  min_age:
    description: Only messages at least this old (seconds, or a number with s, m, h, d, w).
    type: str
  queue_ids:
    description: Only these queue IDs.
    type: list
    elements: str
  all:
    description: With no selector, flush the whole queue (C(postqueue -f)). Without it, a selector is required.
    type: bool
    default: false
author:
  - durable-mx contributors
"""

EXAMPLES = r"""
- name: Retry mail for example.net now
  postfix_queue_flush:
    domain: example.net
"""

RETURN = r"""
selected_ids:
  description: Deferred messages that matched (with O(all), every deferred message).
  returned: always
  type: list
  elements: str
flushed_ids:
  description: IDs postqueue accepted (in check mode, the IDs that would be flushed).
  returned: always
  type: list
  elements: str
failed_ids:
  description: IDs postqueue refused (for example delivered meanwhile), with its message.
  returned: always
  type: list
  elements: dict
command:
  description: The postqueue command line (C(-i ID) per message, or C(-f)).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.postfix_queue import selected_queue_ids


def run_module() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            config_dir=dict(type="path", default="/etc/postfix"),
            domain=dict(type="str"),
            sender=dict(type="str"),
            min_age=dict(type="str"),
            queue_ids=dict(type="list", elements="str"),
            all=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    selective = any(p[k] not in (None, [], "") for k in ("domain", "min_age", "queue_ids")) or p["sender"] is not None
    if not selective and not p["all"]:
        module.fail_json(msg="give a selector (domain, sender, min_age, queue_ids) or all=true to flush the whole queue")
    if selective and p["all"]:
        module.fail_json(msg="all=true flushes everything: leave the selectors out, or drop all")
    try:
        selected, _ = selected_queue_ids(p["config_dir"], ["deferred"], domain=p["domain"], sender=p["sender"],
                                         min_age=p["min_age"], queue_ids=p["queue_ids"])
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    base = ["postqueue", "-c", p["config_dir"]]
    result = dict(selected_ids=selected, failed_ids=[], command=base + (["-f"] if p["all"] else ["-i", "ID"]))
    if not selected or module.check_mode:
        module.exit_json(changed=bool(selected), flushed_ids=selected, **result)
    if p["all"]:
        rc, _, err = module.run_command(base + ["-f"])
        if rc != 0:
            module.fail_json(msg="postqueue -f failed (rc=%d): %s" % (rc, err.strip()), flushed_ids=[], **result)
        module.exit_json(changed=True, flushed_ids=selected, **result)
    flushed = []
    for qid in selected:
        rc, _, err = module.run_command(base + ["-i", qid])
        if rc == 0:
            flushed.append(qid)
        else:
            result["failed_ids"].append(dict(queue_id=qid, error=err.strip()))
    module.exit_json(changed=bool(flushed), flushed_ids=flushed, **result)


def main() -> None:
    run_module()


if __name__ == "__main__":
    main()
