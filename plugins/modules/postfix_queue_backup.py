#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: durable-mx contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: back up one Postfix instance, its configuration and an xfs_freeze-consistent queue."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: postfix_queue_backup
short_description: Back up one Postfix instance's configuration and queue (xfs_freeze-consistent)
description:
  - Writes three files into O(backup_dir) (created; its name is the backup ID)
    C(INSTANCE.config.tar.gz) (O(config_paths)), C(INSTANCE.queue.tar.gz) (the message queues
    and per-message logs) and C(INSTANCE.manifest.json) (queue IDs per queue, file count,
    bytes, sha256 of each archive, time, freeze duration).
  - The queue is read while its XFS volume is frozen (C(xfs_freeze -f) ... C(xfs_freeze -u)),
    into a plain tar on the backup's filesystem; compression and hashing follow the thaw. The
    freeze is bounded by O(freeze_timeout) (tar is stopped, the volume thawed, the module
    fails) and a transient systemd timer thaws the volume even if the module dies.
  - The queue directory must be the mountpoint of an XFS volume and O(backup_dir) must be on
    another filesystem; otherwise the module refuses before freezing anything.
  - Every run writes a new backup (C(changed)). In check mode nothing is frozen or written;
    the result says what would be archived.
options:
  config_dir:
    description: Configuration directory of the Postfix instance.
    type: path
    default: /etc/postfix
  backup_dir:
    description: Directory of this backup (one per backup ID); must not hold a backup of this instance yet.
    type: path
    required: true
  config_paths:
    description: Files and directories of the configuration archive (those that exist); by default O(config_dir).
    type: list
    elements: path
  freeze_timeout:
    description: Longest time in seconds the queue volume may stay frozen.
    type: int
    default: 30
author:
  - durable-mx contributors
"""

EXAMPLES = r"""
- name: Back up the primary instance
  postfix_queue_backup:
    backup_dir: /var/backups/durable-mx/20261129T061500Z
    config_paths: [/etc/postfix, /etc/systemd/system/postfix@-.service.d]
  register: backup
"""

RETURN = r"""
manifest:
  description: The manifest written (in check mode, what would be archived, without archives).
  returned: always
  type: dict
  contains:
    instance:
      description: The instance's syslog_name (C(postfix), C(postfix-bulk)).
      type: str
    freeze_seconds:
      description: How long the queue volume was frozen.
      type: float
    queue:
      description: file, sha256, size (archive bytes), files, bytes (content), messages, queue_ids per queue.
      type: dict
    config:
      description: file, sha256, size, files, paths.
      type: dict
manifest_path:
  description: Where the manifest is.
  returned: when not in check mode
  type: str
"""

import os
import socket
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.postfix_queue import postconf
from ansible.module_utils.queue_backup import (MANIFEST_FORMAT, BackupError, check_freezable, config_archive,
                                               fsync_path, frozen_tar, gzip_file, queue_inventory, queue_members,
                                               sha256_file, tree_ids, write_json_atomic)


def backup(module: AnsibleModule, instance: str, queue_dir: str) -> dict:
    p = module.params
    backup_dir = p["backup_dir"]
    os.makedirs(backup_dir, mode=0o700, exist_ok=True)
    mount = check_freezable(queue_dir, backup_dir)
    manifest_path = os.path.join(backup_dir, "%s.manifest.json" % instance)
    if os.path.exists(manifest_path):
        raise BackupError("%s already holds a backup of %s; a backup ID is used once" % (backup_dir, instance))
    config_file = "%s.config.tar.gz" % instance
    config = config_archive(p["config_paths"] or [p["config_dir"]], os.path.join(backup_dir, config_file))
    config.update(file=config_file, sha256=sha256_file(os.path.join(backup_dir, config_file)),
                  size=os.path.getsize(os.path.join(backup_dir, config_file)))
    stage = os.path.join(backup_dir, ".%s.queue.tar" % instance)
    queue_file = "%s.queue.tar.gz" % instance
    created = time.time()
    timing = frozen_tar(mount["mountpoint"], queue_dir, queue_members(queue_dir), stage, p["freeze_timeout"])
    try:
        queue = queue_inventory(stage)
        gzip_file(stage, os.path.join(backup_dir, queue_file))
    finally:
        os.unlink(stage)
    queue.update(file=queue_file, sha256=sha256_file(os.path.join(backup_dir, queue_file)),
                 size=os.path.getsize(os.path.join(backup_dir, queue_file)))
    manifest = {
        "format": MANIFEST_FORMAT, "backup_id": os.path.basename(os.path.normpath(backup_dir)),
        "node": socket.gethostname(), "instance": instance, "config_dir": p["config_dir"],
        "queue_directory": queue_dir, "volume": mount, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
        "created_unix": round(created, 3), "freeze_timeout": p["freeze_timeout"], "queue": queue, "config": config,
    }
    manifest.update(timing)
    write_json_atomic(manifest_path, manifest)
    fsync_path(backup_dir)
    return {"manifest": manifest, "manifest_path": manifest_path}


def run_module() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            config_dir=dict(type="path", default="/etc/postfix"),
            backup_dir=dict(type="path", required=True),
            config_paths=dict(type="list", elements="path"),
            freeze_timeout=dict(type="int", default=30),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["freeze_timeout"] < 1:
        module.fail_json(msg="freeze_timeout=%d: it must be at least 1 second" % p["freeze_timeout"])
    try:
        settings = postconf(p["config_dir"], ["syslog_name", "queue_directory"], subprocess.run, expand=True)
    except (OSError, RuntimeError, ValueError) as exc:
        module.fail_json(msg="cannot read the settings of config_dir=%s: %s" % (p["config_dir"], exc))
    instance, queue_dir = settings["syslog_name"], settings["queue_directory"]
    if module.check_mode:
        existing = p["backup_dir"]
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        try:
            check_freezable(queue_dir, existing)
        except (BackupError, OSError) as exc:
            module.fail_json(msg="backup of %s (%s) would fail: %s" % (instance, queue_dir, exc))
        ids = tree_ids(queue_dir)
        module.exit_json(changed=True, manifest={
            "instance": instance, "config_dir": p["config_dir"], "queue_directory": queue_dir, "freeze_seconds": None,
            "queue": {"queue_ids": ids, "messages": sum(len(v) for v in ids.values())},
            "config": {"paths": [x for x in (p["config_paths"] or [p["config_dir"]]) if os.path.lexists(x)]}})
    try:
        result = backup(module, instance, queue_dir)
    except (BackupError, OSError) as exc:
        module.fail_json(msg="backup of %s (%s) failed: %s" % (instance, queue_dir, exc))
    module.exit_json(changed=True, **result)


def main() -> None:
    run_module()


if __name__ == "__main__":
    main()
