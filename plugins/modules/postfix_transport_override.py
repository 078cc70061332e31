#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: durable-mx contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: set, remove or list the runbook route override of a destination."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: postfix_transport_override
short_description: Suspend, throttle or reroute a destination of one Postfix instance, for a while
description:
  - Keeps the runbook overrides of one instance as data (C(durable-mx-runbook.json) in its
    configuration directory) and renders them into the texthash map
    C(durable-mx-runbook-transport), which main.cf lists first in C(transport_maps) (role
    postfix), so an override wins over the role's transport map and a converge of site.yml
    leaves it in place.
  - A change is checked before it goes live (every transport named must be a unix service of
    master.cf; Postfix must read the candidate map and look every domain up to its route), the
    map and the data are replaced atomically and the instance is reloaded (only if it runs;
    never started or restarted).
  - An override with an expiry is removed by C(durable-mx-runbook-expire) (a systemd timer the
    runbook role installs) once it is due, or by the next run of this module.
  - Setting the same override again changes nothing (its expiry stays) unless O(renew).
options:
  config_dir:
    description: Configuration directory of the instance.
    type: path
    default: /etc/postfix
  state:
    description:
      - C(present) sets the override of O(domain) (replacing another kind), C(absent) removes it
        (only of the kinds in O(kinds) when given), C(query) only reports the overrides.
      - Every state first drops overrides that are already due.
    type: str
    choices: [present, absent, query]
    default: present
  domain:
    description: Recipient domain; a leading dot (C(.example.net)) means its subdomains. Required unless C(query).
    type: str
  kind:
    description: C(suspend) (transport C(retry), mail stays queued), C(throttle) or C(reroute).
    type: str
    choices: [suspend, throttle, reroute]
  kinds:
    description: With C(absent), remove only overrides of these kinds.
    type: list
    elements: str
    choices: [suspend, throttle, reroute]
  transport:
    description: master.cf service the destination goes to (C(retry) for a suspension).
    type: str
  nexthop:
    description: Next hop for that transport (for C(retry), the text of the deferral reason).
    type: str
    default: ""
  duration:
    description: How long the override lasts (C(90s), C(30m), C(2h), C(1d)); empty means until removed.
    type: str
    default: ""
  renew:
    description: Restart the expiry of an override that is already in place with the same route.
    type: bool
    default: false
  reason:
    description: Why (shown in the map's comments and the module's result).
    type: str
    default: ""
  set_by:
    description: Who or what set it (recorded in the data).
    type: str
    default: ""
  reload:
    description: Reload the instance after a change of its map.
    type: bool
    default: true
author:
  - durable-mx contributors
"""

EXAMPLES = r"""
- name: Keep mail for example.net queued for two hours
  postfix_transport_override:
    domain: example.net
    kind: suspend
    transport: retry
    nexthop: "4.3.2 example.net suspended by the durable-mx runbook"
    duration: 2h

- name: Lift it again
  postfix_transport_override:
    domain: example.net
    state: absent
"""

RETURN = r"""
entries:
  description: The instance's overrides after the change (or that the change would give in check mode).
  returned: always
  type: list
  elements: dict
entry:
  description: The override of O(domain) after the change (null when there is none).
  returned: when O(domain) is given
  type: dict
previous:
  description: The override of O(domain) before the change (null when there was none).
  returned: when O(domain) is given
  type: dict
removed:
  description: Overrides removed by C(absent).
  returned: always
  type: list
  elements: dict
expired:
  description: Overrides dropped because they were due.
  returned: always
  type: list
  elements: dict
reloaded:
  description: The unit reloaded (C(postfix@-.service)), or null.
  returned: always
  type: str
map_path:
  description: Path of the rendered map.
  returned: always
  type: str
"""

import contextlib
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.postfix_queue import parse_duration
from ansible.module_utils.runbook_overrides import (OverrideError, apply, check_entry, check_honoured, check_transports,
                                                    expire, load_entries, locked, map_path, master_services,
                                                    normalize_domain, read_file, remove, render_map, upsert)


def run_module() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            config_dir=dict(type="path", default="/etc/postfix"),
            state=dict(type="str", choices=["present", "absent", "query"], default="present"),
            domain=dict(type="str"),
            kind=dict(type="str", choices=["suspend", "throttle", "reroute"]),
            kinds=dict(type="list", elements="str", choices=["suspend", "throttle", "reroute"]),
            transport=dict(type="str"),
            nexthop=dict(type="str", default=""),
            duration=dict(type="str", default=""),
            renew=dict(type="bool", default=False),
            reason=dict(type="str", default=""),
            set_by=dict(type="str", default=""),
            reload=dict(type="bool", default=True),
        ),
        required_if=[("state", "present", ("domain", "kind", "transport")), ("state", "absent", ("domain",))],
        supports_check_mode=True,
    )
    p = module.params
    config_dir = p["config_dir"]
    result = dict(map_path=map_path(config_dir), removed=[], expired=[], reloaded=None)
    # Read, change and apply under the instance's lock (the expiry timer takes it too); check mode
    # writes nothing, not even the lock file.
    writing = p["state"] != "query" and not module.check_mode
    try:
        with (locked(config_dir) if writing else contextlib.nullcontext()):
            outcome = change(module, config_dir, result)
    except (OverrideError, ValueError, OSError) as exc:
        module.fail_json(msg="%s (config_dir=%s)" % (exc, config_dir), **result)
    result["reloaded"] = outcome["reloaded"]
    module.exit_json(changed=outcome["changed"], diff=dict(before=outcome["map_before"], after=outcome["map_after"],
                                                            before_header=result["map_path"],
                                                            after_header=result["map_path"]), **result)


def change(module: AnsibleModule, config_dir: str, result: dict) -> dict:
    """Compute the new overrides and apply them; exits the module itself when nothing is to apply."""
    p = module.params
    now = int(time.time())
    current = load_entries(config_dir)
    entries, result["expired"] = expire(current, now)
    domain = normalize_domain(p["domain"]) if p["domain"] else None
    previous = next((e for e in entries if e["domain"] == domain), None) if domain else None
    if p["state"] == "present":
        seconds = parse_duration(p["duration"]) if p["duration"] else 0
        new = check_entry(dict(domain=domain, kind=p["kind"], transport=p["transport"], nexthop=p["nexthop"],
                               expires_at=(now + seconds) if seconds else None, reason=p["reason"],
                               set_at=now, set_by=p["set_by"]))
        entries, _, previous = upsert(entries, new, renew=p["renew"])
    elif p["state"] == "absent":
        entries, result["removed"] = remove(entries, domain, p["kinds"])
    if domain:
        result.update(previous=previous, entry=next((e for e in entries if e["domain"] == domain), None))
    result["entries"] = entries
    if p["state"] == "query" or entries == current:
        module.exit_json(changed=False, **result)
    if module.check_mode:
        # What apply() would refuse, refused now: a main.cf that ignores the map, an unknown transport.
        if entries:
            check_honoured(config_dir, subprocess.run)
        check_transports(entries, master_services(config_dir, subprocess.run))
        module.exit_json(changed=True, diff=dict(before=read_file(map_path(config_dir)) or "", after=render_map(entries),
                                                 before_header=result["map_path"], after_header=result["map_path"]),
                         **result)
    return apply(config_dir, entries, subprocess.run, reload=p["reload"])


def main() -> None:
    run_module()


if __name__ == "__main__":
    main()
