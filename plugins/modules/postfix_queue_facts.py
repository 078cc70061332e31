#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: durable-mx contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: summarise one Postfix instance's queues."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: postfix_queue_facts
short_description: Summarise the mail queues of one Postfix instance
description:
  - Reads the queue files of one Postfix instance directly (one directory walk, only the
    envelope at the head of each file and the per-message defer log), so it works whether
    Postfix runs or not and is much faster than C(postqueue -j) or C(qshape) on large queues.
  - Reports, per queue (maildrop, incoming, active, deferred, hold, corrupt), the message
    count, bytes, pending recipients, oldest age, an age histogram in qshape's buckets and
    the top destination domains; for the instance, the top deferral reasons classified as
    dns, connect, tls, 4xx, 5xx or other.
  - Read-only; safe in check mode.
  - The result is returned under the plain key C(queue) (not C(ansible_facts)), so that
    several instances on one host can be registered side by side.
options:
  config_dir:
    description:
      - Configuration directory of the Postfix instance; C(postconf -c) reads its
        queue_directory and hashing settings.
    type: path
    default: /etc/postfix
  queue_directory:
    description:
      - Read this queue directory instead of the instance's queue_directory, for example a
        queue volume mounted from another node. postconf is then not called.
    type: path
  source:
    description:
      - C(files) walks the queue directory; C(postqueue) parses C(postqueue -j), which needs
        a running instance and is slower on large queues.
    type: str
    choices: [files, postqueue]
    default: files
  top_n:
    description: Number of domains and reasons to list.
    type: int
    default: 10
  cache:
    description:
      - Keep what was read in a file under O(cache_dir) and, next time, read only the queue
        files and defer logs whose inode, ctime or size changed since (any change Postfix
        makes to a file sets its ctime). With C(source=files) only.
      - The cache is read in check mode but not written.
    type: bool
    default: true
  cache_dir:
    description: Directory of the cache files, one per queue directory (root only, mode 0700).
    type: path
    default: /var/cache/durable-mx
  all_instances:
    description:
      - Read every Postfix instance of the node instead of one, the primary and each instance
        its C(multi_instance_directories) lists (postmulti), and return them under C(instances),
        each labelled with its C(syslog_name) as C(instance). O(config_dir) and
        O(queue_directory) are then not used. With C(source=files) only.
    type: bool
    default: false
  list_ids:
    description: Also return C(queue_ids), the queue IDs per queue (sorted), in each summary.
    type: bool
    default: false
author:
  - durable-mx contributors
"""

EXAMPLES = r"""
- name: Read the queue of the default instance
  postfix_queue_facts:
  register: mx_queue

- name: Fail when mail has waited more than a day
  ansible.builtin.assert:
    that: mx_queue.queue.oldest_age < 86400
    fail_msg: "Oldest message is {{ mx_queue.queue.oldest_age }} s old"

- name: Read a second instance
  postfix_queue_facts:
    config_dir: /etc/postfix-out
    top_n: 5
  register: out_queue

- name: Read every instance of the node (postmulti), labelled by instance
  postfix_queue_facts:
    all_instances: true
  register: node_queues

- name: Fail when a bulk tenant holds more than 10,000 messages
  ansible.builtin.assert:
    that: (node_queues.instances | selectattr('instance', 'eq', 'postfix-bulk') | first).total.count < 10000
"""

RETURN = r"""
queue:
  description: Summary of the instance's queues.
  returned: when O(all_instances) is false
  type: dict
  contains:
    instance:
      description: The instance's C(syslog_name) (C(postfix), C(postfix-bulk)); null when O(queue_directory) was given.
      type: str
    config_dir:
      description: Configuration directory used.
      type: str
    queue_directory:
      description: Queue directory read.
      type: str
    source:
      description: C(files) or C(postqueue).
      type: str
    generated_at:
      description: Unix time the summary refers to; ages are relative to it.
      type: int
    queues:
      description:
        - Per queue name, C(count), C(bytes) (content size as postqueue reports it),
          C(recipients) (pending), C(oldest_age) (seconds since arrival),
          C(age_histogram) and C(top_domains).
        - C(age_histogram) keys are qshape's columns in minutes; key C(5) counts messages
          younger than 5 minutes, key C(10) those from 5 to 10 minutes, and so on;
          C(1280+) counts the rest.
      type: dict
      sample:
        deferred:
          count: 12
          bytes: 33153
          recipients: 18
          oldest_age: 78
          age_histogram: {"5": 12, "10": 0, "20": 0, "40": 0, "80": 0, "160": 0, "320": 0,
                          "640": 0, "1280": 0, "1280+": 0}
          top_domains: [{domain: conn.test, count: 6}]
    total:
      description: C(count), C(bytes) and C(recipients) over all queues.
      type: dict
    oldest_age:
      description: Age in seconds of the oldest message in any queue (0 when empty).
      type: int
    top_domains:
      description: Recipient domains with the most pending recipients, over all queues.
      type: list
      elements: dict
    top_reasons:
      description: Most frequent deferral reasons with their class and recipient count.
      type: list
      elements: dict
      sample: [{class: connect, reason: "connect to mx.example.net[192.0.2.1]:25: Connection timed out",
                count: 6}]
    reason_classes:
      description: Deferred recipients per class (dns, connect, tls, 4xx, 5xx, other).
      type: dict
    queue_ids:
      description: With O(list_ids), queue name -> sorted queue IDs (queues without messages left out).
      type: dict
    errors:
      description: Queue files that could not be read, with the error.
      type: list
      elements: dict
instances:
  description:
    - With O(all_instances), one summary per instance of the node, as C(queue) above, plus
      C(group), its C(multi_instance_group) (empty for the primary).
  returned: when O(all_instances) is true
  type: list
  elements: dict
"""

import os
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.postfix_queue import (EnvelopeCache, instance_settings, list_instances,
                                                parse_postqueue_json, postconf, summarize, walk_queue)


def read_files(module: AnsibleModule, queue_dir: str):
    """Walk one queue directory, through the cache file of that directory when enabled."""
    params = module.params
    if not params["cache"]:
        return walk_queue(queue_dir)
    name = "queue-facts%s.cache" % os.path.abspath(queue_dir).replace("/", "_")
    cache_file = os.path.join(params["cache_dir"], name)
    cache = EnvelopeCache.load(cache_file)
    messages, errors = walk_queue(queue_dir, cache=cache)
    if cache.changed and not module.check_mode:
        try:
            cache.save(cache_file)
        except OSError as exc:
            module.warn("could not save the queue cache %s: %s" % (cache_file, exc))
    return messages, errors


def with_ids(module: AnsibleModule, summary: dict, messages: list) -> dict:
    if module.params["list_ids"]:
        ids: dict = {}
        for m in messages:
            ids.setdefault(m["queue_name"], []).append(m["queue_id"])
        summary["queue_ids"] = {q: sorted(v) for q, v in sorted(ids.items())}
    return summary


def all_instances(module: AnsibleModule, now: int) -> None:
    params = module.params
    if params["source"] != "files":
        module.fail_json(msg="all_instances works with source=files, not source=%s" % params["source"])
    try:
        instances = list_instances(subprocess.run)
    except (OSError, RuntimeError, ValueError) as exc:
        module.fail_json(msg="cannot list the Postfix instances of this node: %s" % exc)
    summaries = []
    for inst in instances:
        messages, errors = read_files(module, inst["queue_directory"])
        summary = summarize(messages, now, params["top_n"])
        summary.update(instance=inst["name"], group=inst["group"], config_dir=inst["config_dir"],
                       queue_directory=inst["queue_directory"], source="files", generated_at=now, errors=errors)
        summaries.append(with_ids(module, summary, messages))
    module.exit_json(changed=False, instances=summaries)


def run_module() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            config_dir=dict(type="path", default="/etc/postfix"),
            queue_directory=dict(type="path"),
            source=dict(type="str", choices=["files", "postqueue"], default="files"),
            top_n=dict(type="int", default=10),
            cache=dict(type="bool", default=True),
            cache_dir=dict(type="path", default="/var/cache/durable-mx"),
            all_instances=dict(type="bool", default=False),
            list_ids=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if params["top_n"] < 1:
        module.fail_json(msg="top_n=%d: it must be at least 1" % params["top_n"])
    now = int(time.time())
    if params["all_instances"]:
        all_instances(module, now)
    errors = []
    instance = None
    if params["source"] == "postqueue":
        cmd = ["postqueue", "-c", params["config_dir"], "-j"]
        rc, out, err = module.run_command(cmd)
        if rc != 0:
            module.fail_json(msg="%s failed (rc=%d): %s" % (" ".join(cmd), rc, err.strip()))
        messages = parse_postqueue_json(out)
        queue_dir = params["queue_directory"]
    else:
        queue_dir = params["queue_directory"]
        if not queue_dir:
            try:
                queue_dir = instance_settings(params["config_dir"], subprocess.run)["queue_directory"]
            except (OSError, RuntimeError, ValueError) as exc:
                module.fail_json(msg="cannot read the settings of config_dir=%s: %s" % (params["config_dir"], exc))
        messages, errors = read_files(module, queue_dir)
    if not params["queue_directory"]:
        try:
            instance = postconf(params["config_dir"], ["syslog_name"], subprocess.run, expand=True)["syslog_name"]
        except (OSError, RuntimeError, ValueError) as exc:
            module.fail_json(msg="cannot read the syslog_name of config_dir=%s: %s" % (params["config_dir"], exc))
    summary = summarize(messages, now, params["top_n"])
    summary.update(instance=instance, config_dir=params["config_dir"], queue_directory=queue_dir,
                   source=params["source"], generated_at=now, errors=errors)
    module.exit_json(changed=False, queue=with_ids(module, summary, messages))


def main() -> None:
    run_module()


if __name__ == "__main__":
    main()
