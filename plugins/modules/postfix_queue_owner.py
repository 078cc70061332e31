#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: durable-mx contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: give a queue written by another node's Postfix this node's Postfix IDs."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: postfix_queue_owner
short_description: Give a Postfix queue from another node the owner and group IDs of this node's Postfix
description:
  - For a queue volume that moved from another node (runbook adopt). Postfix's user and groups
    may have other numeric IDs there; Postfix then refuses or mishandles the files, and the
    integrity scan would quarantine them all as C(bad-owner).
  - The other node's IDs are read from the queue itself (owner of C(active), group of
    C(public), group of the owner's queue files) and mapped onto the C(mail_owner), its
    primary group and the C(setgid_group) of O(config_dir), in one pass over the queue's
    filesystem. Root and other users' files keep their owner.
  - Changes nothing when the IDs already match. Check mode reports what would change.
options:
  config_dir:
    description: Configuration directory of the instance that will run the queue (its queue_directory, mail_owner, setgid_group).
    type: path
    required: true
author:
  - durable-mx contributors
"""

EXAMPLES = r"""
- name: Take the queue's files over for this node's Postfix
  postfix_queue_owner:
    config_dir: /etc/postfix-adopt-mx1
"""

RETURN = r"""
owners:
  description: previous and current IDs, uid_map and gid_map applied, examined, changed (counts), changed_sample (paths), dry_run.
  returned: always
  type: dict
"""

import grp
import pwd
import subprocess

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.postfix_queue import instance_settings, remap_queue_owners


def run_module() -> None:
    module = AnsibleModule(argument_spec=dict(config_dir=dict(type="path", required=True)), supports_check_mode=True)
    config_dir = module.params["config_dir"]
    try:
        settings = instance_settings(config_dir, subprocess.run)
        owner = pwd.getpwnam(settings["mail_owner"])
        setgid_gid = grp.getgrnam(settings["setgid_group"]).gr_gid
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        module.fail_json(msg="cannot read the settings of config_dir=%s: %s" % (config_dir, exc))
    try:
        report = remap_queue_owners(settings["queue_directory"], owner.pw_uid, owner.pw_gid, setgid_gid,
                                    dry_run=module.check_mode)
    except OSError as exc:
        module.fail_json(msg="cannot take over the owners of queue_directory=%s (config_dir=%s): %s"
                         % (settings["queue_directory"], config_dir, exc))
    module.exit_json(changed=report["changed"] > 0, owners=report)


def main() -> None:
    run_module()


if __name__ == "__main__":
    main()
