#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: durable-mx contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: verify a postfix_queue_backup backup and restore it into a stopped instance."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: postfix_queue_restore
short_description: Verify a Postfix instance's backup against its manifest and restore it
description:
  - Reads C(INSTANCE.manifest.json) in O(backup_dir) (module postfix_queue_backup) and checks the
    sha256 of each archive to restore, and that the queue archive holds exactly the queue IDs the
    manifest lists and nothing outside the queue trees. Any mismatch fails before anything changes.
  - With O(verify_only) (and in check mode) it stops there and says what a restore would do.
  - Otherwise the instance must be stopped. With O(config), the configuration archive is
    extracted into a staging directory and checked with C(postfix -c STAGE check) before anything
    changes; then the current queue trees are renamed into
    C(QUEUE_DIRECTORY/durable-mx-restore-aside/TIME) (same volume, nothing deleted), the queue
    archive is extracted and the volume synced; with O(config) the live configuration directory
    is copied into C(BACKUP_DIR/restore-aside-TIME/) and the staged files replace the live ones.
  - Ownership, the integrity scan and C(postsuper -s) are the caller's next steps
    (C(postfix set-permissions), module postfix_queue_integrity).
options:
  config_dir:
    description: Configuration directory of the Postfix instance.
    type: path
    default: /etc/postfix
  backup_dir:
    description: Directory of the backup (its name is the backup ID).
    type: path
    required: true
  queue:
    description: Restore the queue.
    type: bool
    default: true
  config:
    description: Restore the configuration directory too (validated first). Unit drop-ins in the archive are not restored.
    type: bool
    default: false
  verify_only:
    description: Only verify the backup.
    type: bool
    default: false
author:
  - durable-mx contributors
"""

EXAMPLES = r"""
- name: Verify a backup before stopping anything
  postfix_queue_restore:
    backup_dir: /var/backups/durable-mx/20261129T061500Z
    verify_only: true
"""

RETURN = r"""
manifest:
  description: The backup's manifest.
  returned: always
  type: dict
restored_ids:
  description: Queue IDs per queue in the queue directory after the extraction (check mode, verify_only - the manifest's).
  returned: always
  type: dict
aside:
  description: Where the queue trees that were there before went (on the queue volume).
  returned: when the queue was restored
  type: str
config_files:
  description: Configuration files replaced.
  returned: when the configuration was restored
  type: list
  elements: str
"""

import os
import shutil
import subprocess
import tarfile
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.postfix_queue import postconf
from ansible.module_utils.queue_backup import (BackupError, check_member, config_tops, fsync_path, load_manifest,
                                               move_aside, tree_ids, verify_backup)


def master_running(queue_dir: str) -> bool:
    try:
        with open(os.path.join(queue_dir, "pid", "master.pid")) as fh:
            pid = int(fh.read().split()[0])
        with open("/proc/%d/comm" % pid) as fh:
            return fh.read().strip() == "master"
    except (OSError, ValueError, IndexError):
        return False


def stage_config(module: AnsibleModule, backup_dir: str, manifest: dict, config_dir: str, stage: str) -> str:
    """Extract the configuration archive into stage and have Postfix check it; the staged config dir."""
    archive = os.path.join(backup_dir, manifest["config"]["file"])
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            check_member(member, config_tops(manifest), links=True)
    rc, _out, err = module.run_command(["tar", "-C", stage, "-xpf", archive])
    if rc != 0:
        raise BackupError("extracting %s failed: %s" % (archive, err.strip()))
    staged = os.path.join(stage, config_dir.lstrip("/"))
    if not os.path.isfile(os.path.join(staged, "main.cf")):
        raise BackupError("the configuration archive has no %s/main.cf" % config_dir)
    # postfix prints its fatal reason only to a terminal: give it one (as durable-mx-postfix-check).
    rc, out, err = module.run_command(["script", "-qec", "postfix -c %s check" % staged, "/dev/null"])
    if rc != 0:
        raise BackupError("postfix -c %s check rejected the configuration of the backup: %s"
                          % (staged, (out + err).replace("\r", "").strip()))
    return staged


def replace_config(staged: str, config_dir: str, aside: str) -> list:
    """Keep a copy of the live directory in aside, then replace each file atomically."""
    shutil.copytree(config_dir, os.path.join(aside, config_dir.lstrip("/")), symlinks=True)
    replaced = []
    for root, _dirs, names in os.walk(staged):
        target_dir = os.path.join(config_dir, os.path.relpath(root, staged))
        os.makedirs(target_dir, exist_ok=True)
        for name in names:
            src, dst = os.path.join(root, name), os.path.join(target_dir, name)
            tmp = dst + ".durable-mx-restore"
            shutil.copy2(src, tmp, follow_symlinks=False)
            os.rename(tmp, dst)
            replaced.append(dst)
        fsync_path(target_dir)
    return sorted(replaced)


def run_module() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            config_dir=dict(type="path", default="/etc/postfix"),
            backup_dir=dict(type="path", required=True),
            queue=dict(type="bool", default=True),
            config=dict(type="bool", default=False),
            verify_only=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    parts = [name for name in ("queue", "config") if p[name]]
    try:
        settings = postconf(p["config_dir"], ["syslog_name", "queue_directory"], subprocess.run, expand=True)
        manifest = load_manifest(p["backup_dir"], settings["syslog_name"])
        problems = verify_backup(p["backup_dir"], manifest, parts)
    except (BackupError, OSError, ValueError, RuntimeError, KeyError) as exc:
        module.fail_json(msg="cannot verify the backup %s of config_dir=%s: %s" % (p["backup_dir"], p["config_dir"], exc))
    if problems:
        module.fail_json(msg="refusing to restore %s from %s, nothing was changed: %s"
                         % (settings["syslog_name"], p["backup_dir"], "; ".join(problems)), problems=problems)
    queue_dir = settings["queue_directory"]
    result = {"changed": False, "manifest": manifest, "restored_ids": manifest["queue"]["queue_ids"]}
    if p["verify_only"] or module.check_mode:
        result["changed"] = not p["verify_only"]
        module.exit_json(**result)
    if master_running(queue_dir):
        module.fail_json(msg="%s is running (%s/pid/master.pid): stop it before a restore, nothing was changed"
                         % (settings["syslog_name"], queue_dir), **result)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    stage = tempfile.mkdtemp(prefix="durable-mx-restore-", dir="/run")
    try:
        staged = stage_config(module, p["backup_dir"], manifest, p["config_dir"], stage) if p["config"] else None
        if p["queue"]:
            aside = os.path.join(queue_dir, "durable-mx-restore-aside", stamp)
            result["moved_aside"] = move_aside(queue_dir, aside)
            result["aside"] = aside
            archive = os.path.join(p["backup_dir"], manifest["queue"]["file"])
            rc, _out, err = module.run_command(["tar", "-C", queue_dir, "-xpf", archive])
            if rc != 0:
                raise BackupError("extracting %s failed (rc=%d): %s; the earlier queue is in %s" % (archive, rc, err.strip(), aside))
            # The restored files must be on disk before Postfix may act on them.
            module.run_command(["sync", "-f", queue_dir], check_rc=True)
            result["restored_ids"] = tree_ids(queue_dir)
        if staged:
            result["config_files"] = replace_config(staged, p["config_dir"],
                                                    os.path.join(p["backup_dir"], "restore-aside-" + stamp))
    except (BackupError, OSError) as exc:
        module.fail_json(msg="restore of %s from %s failed: %s" % (settings["syslog_name"], p["backup_dir"], exc), **result)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    result["changed"] = True
    module.exit_json(**result)


def main() -> None:
    run_module()


if __name__ == "__main__":
    main()
