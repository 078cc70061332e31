#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: durable-mx contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: quarantine suspect Postfix queue files, then let postsuper -s repair the structure."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: postfix_queue_integrity
short_description: Quarantine suspect Postfix queue files and repair the queue structure
description:
  - Scans the message queues of one Postfix instance for orphaned temporary files,
    zero-length files, files that were never completed (owner bits not rwx), stray mode
    bits, a wrong owner, truncated files (no END record), unknown record types and names
    that are not queue IDs.
  - Moves each suspect file with C(rename) to a quarantine directory on the same
    filesystem, next to a C(.label.json) file giving the reason, time and original path.
    Nothing is ever deleted; a file is never copied.
  - Files in the wrong hash directory are reported as C(misplaced) and left for
    C(postsuper -s), which moves them where the current hash_queue_depth wants them,
    unless O(quarantine_misplaced) is set.
  - Then, outside check mode, runs C(postsuper -c CONFIG_DIR -s) for Postfix's own
    structure pass.
  - Best run while the instance is stopped (the durable-mx-queue-integrity command does the
    same from ExecStartPre); on a running instance, files being written right now look
    incomplete.
  - In check mode nothing moves and postsuper is not run; the report says what would be
    quarantined.
options:
  config_dir:
    description: Configuration directory of the Postfix instance.
    type: path
    default: /etc/postfix
  quarantine_dir:
    description:
      - Where suspect files go (a timestamped subdirectory is created per run). Must be on
        the queue's filesystem. Default is C(durable-mx-quarantine) beside the queue
        directory when that is on the same filesystem, else inside it.
    type: path
  quarantine_misplaced:
    description: Also quarantine files in the wrong hash directory.
    type: bool
    default: false
  structure_pass:
    description: Run C(postsuper -s) after the scan (not in check mode).
    type: bool
    default: true
  full:
    description:
      - Check every file. By default a file whose inode, size and ctime are those it had
        when an earlier scan with the same settings found it sound is not checked again (a
        write, rename, chmod or chown would have changed its ctime).
    type: bool
    default: false
author:
  - durable-mx contributors
"""

EXAMPLES = r"""
- name: Scan the queue before starting Postfix
  postfix_queue_integrity:
  register: integrity

- name: Report quarantined files
  ansible.builtin.debug:
    msg: "{{ integrity.report.suspects | map(attribute='path') | list }}"
  when: integrity.changed
"""

RETURN = r"""
report:
  description: The scan report.
  returned: always
  type: dict
  contains:
    queue_directory:
      description: Queue directory scanned.
      type: str
    quarantine_directory:
      description: This run's quarantine directory (created only when something moved).
      type: str
    dry_run:
      description: True in check mode.
      type: bool
    scanned:
      description: Files examined.
      type: int
    full:
      description: True when every file was checked (asked for, or no usable earlier scan).
      type: bool
    unchanged_since_last_scan:
      description: Files not checked again because they are unchanged since a scan found them sound.
      type: int
    suspects:
      description:
        - One item per suspect file with path, queue, queue_id, reason, detail, size,
          mode, uid, gid, action (quarantined, would quarantine or failed) and
          quarantined_to.
        - Reasons are not-regular, temp-orphan, bad-name, zero-length, not-ready,
          bad-mode, bad-owner, truncated, unknown-record, bad-record and (with
          quarantine_misplaced) misplaced.
      type: list
      elements: dict
    misplaced:
      description: Files in the wrong hash directory, left for postsuper -s.
      type: list
      elements: dict
    quarantined:
      description: Number of files moved.
      type: int
    corrupt_queue_files:
      description: Files in Postfix's own corrupt queue (counted, not touched).
      type: int
    errors:
      description: Files that could not be examined or moved.
      type: list
      elements: dict
    clean:
      description: True when nothing suspect, misplaced or failing was found.
      type: bool
postsuper_output:
  description: What postsuper -s printed.
  returned: when postsuper ran
  type: str
"""

import grp
import pwd
import subprocess

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.postfix_queue import instance_settings, integrity_scan


def run_module() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            config_dir=dict(type="path", default="/etc/postfix"),
            quarantine_dir=dict(type="path"),
            quarantine_misplaced=dict(type="bool", default=False),
            structure_pass=dict(type="bool", default=True, no_log=False),  # "pass" is not a password
            full=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        settings = instance_settings(p["config_dir"], subprocess.run)
        owner_uid = pwd.getpwnam(settings["mail_owner"]).pw_uid
        postdrop_gid = grp.getgrnam(settings["setgid_group"]).gr_gid
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        module.fail_json(msg="cannot read the settings of config_dir=%s: %s" % (p["config_dir"], exc))
    try:
        report = integrity_scan(settings["queue_directory"], quarantine_dir=p["quarantine_dir"],
                                dry_run=module.check_mode, hash_queue_names=settings["hash_queue_names"],
                                hash_queue_depth=settings["hash_queue_depth"], owner_uid=owner_uid,
                                postdrop_gid=postdrop_gid, quarantine_misplaced=p["quarantine_misplaced"],
                                full=p["full"])
    except (OSError, ValueError) as exc:
        module.fail_json(msg="integrity scan of %s failed: %s" % (settings["queue_directory"], exc))
    result = dict(report=report, changed=report["quarantined"] > 0)
    if module.check_mode:
        result["changed"] = any(s["action"] == "would quarantine" for s in report["suspects"])
    elif p["structure_pass"]:
        cmd = ["postsuper", "-c", p["config_dir"], "-s"]
        rc, out, err = module.run_command(cmd)
        result["postsuper_output"] = err + out
        if rc != 0:
            module.fail_json(msg="%s failed (rc=%d): %s" % (" ".join(cmd), rc, err.strip()), **result)
    if report["errors"]:
        module.fail_json(msg="integrity scan could not examine or move %d file(s); first: %s"
                         % (len(report["errors"]), report["errors"][0]), **result)
    module.exit_json(**result)


def main() -> None:
    run_module()


if __name__ == "__main__":
    main()
