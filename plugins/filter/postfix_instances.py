# -*- coding: utf-8 -*-
# Copyright: durable-mx contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""postfix_instance_plan / postfix_instances_exporter: the tenant instances a node declares.

An instance declared as {name: bulk, ...} in postfix_instances_list is the postmulti
instance `postfix-bulk`: configuration directory /etc/postfix-bulk, queue directory
/var/spool/postfix-bulk (on its own volume), data directory /var/lib/postfix-bulk, syslog
name postfix-bulk (the exporter's postfix_instance label) and systemd unit
postfix@postfix-bulk.service.  The plan fills those in, with the defaults of the optional
fields, and refuses what cannot work on one node: repeated names, queue devices, volume
labels or listeners, a listener that would take the primary's port 25, a present instance
without a queue device or retry policy.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping

from ansible.errors import AnsibleFilterError

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
KEYS = ("name", "state", "group", "mail_class", "weight", "listen", "inet_interfaces", "queue_device",
        "queue_label", "nice", "retry_policy", "transports", "default_transport", "relay_transport",
        "parameters", "master_services")
LABEL_MAX = 12  # XFS labels


def _fail(msg: str) -> None:
    raise AnsibleFilterError("postfix_instance_plan: " + msg)


def _one(raw: Any, index: int) -> Dict[str, Any]:
    if not isinstance(raw, Mapping):
        _fail("entry %d is %r; expected a mapping with at least name" % (index, raw))
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        _fail("instance %r: unknown key(s) %s; known: %s" % (raw.get("name"), ", ".join(unknown), ", ".join(KEYS)))
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        _fail("name %r must be lower-case letters, digits and dashes, starting with a letter, at most 31 "
              "characters (the instance becomes postfix-NAME)" % (name,))
    state = raw.get("state", "present")
    if state not in ("present", "absent"):
        _fail("instance %r: state=%r; expected present or absent" % (name, state))
    mail_class = raw.get("mail_class") or name
    weight = raw.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
        _fail("instance %r: weight=%r must be a number >= 0" % (name, weight))
    nice = raw.get("nice", 0)
    if isinstance(nice, bool) or not isinstance(nice, int) or not 0 <= nice <= 19:
        _fail("instance %r: nice=%r must be an integer from 0 to 19 (a lower CPU priority, never a higher one)"
              % (name, nice))
    postmulti = "postfix-" + name
    plan = {
        "name": name,
        "state": state,
        "postmulti_name": postmulti,
        "config_dir": "/etc/" + postmulti,
        "queue_directory": "/var/spool/" + postmulti,
        "data_directory": "/var/lib/" + postmulti,
        "unit": "postfix@%s.service" % postmulti,
        "group": raw.get("group") or mail_class,
        "mail_class": mail_class,
        "weight": weight,
        "listen": str(raw.get("listen", "smtp")),
        "inet_interfaces": raw.get("inet_interfaces", ""),
        "queue_device": raw.get("queue_device", ""),
        "queue_label": raw.get("queue_label") or ("dmx-" + name)[:LABEL_MAX],
        "nice": nice,
        "retry_policy": raw.get("retry_policy"),
        "parameters": list(raw.get("parameters") or []),
        "master_services": list(raw.get("master_services") or []),
    }
    for key in ("transports", "default_transport", "relay_transport"):
        plan[key] = raw.get(key)  # None: inherit the node's value
    if not NAME_RE.match(plan["group"]):
        _fail("instance %r: group %r must be lower-case letters, digits and dashes" % (name, plan["group"]))
    if len(plan["queue_label"]) > LABEL_MAX:
        _fail("instance %r: queue_label %r is longer than %d characters (XFS)" % (name, plan["queue_label"], LABEL_MAX))
    if state == "present":
        if not plan["queue_device"]:
            _fail("instance %r needs queue_device, the block device of its own queue volume" % name)
        if not isinstance(plan["retry_policy"], Mapping):
            _fail("instance %r needs retry_policy (first_retry, max_interval, give_up_after, warn_after): "
                  "each class retries on its own schedule" % name)
        if plan["listen"] in ("smtp", "25") and not plan["inet_interfaces"]:
            _fail("instance %r listens on port 25 of every address (listen=%s, no inet_interfaces), like the "
                  "primary instance: give it a port (listen: 2526) or an address of its own (inet_interfaces)"
                  % (name, plan["listen"]))
    return plan


def _repeated(values: List[Any]) -> List[Any]:
    seen, dupes = set(), []
    for value in values:
        if value in seen and value not in dupes:
            dupes.append(value)
        seen.add(value)
    return dupes


def postfix_instance_plan(declared: Any) -> List[Dict[str, Any]]:
    """postfix_instances_list -> the same instances with names, paths and defaults filled in."""
    if declared is None:
        return []
    if not isinstance(declared, (list, tuple)):
        _fail("expected a list of instances, got %r" % (declared,))
    plan = [_one(raw, i) for i, raw in enumerate(declared)]
    present = [p for p in plan if p["state"] == "present"]
    checks = (
        ("names", [p["name"] for p in plan]),
        ("queue devices", [p["queue_device"] for p in present]),
        ("queue volume labels", [p["queue_label"] for p in present]),
        ("listeners (inet_interfaces + listen)", [(p["inet_interfaces"], p["listen"]) for p in present]),
    )
    for what, values in checks:
        dupes = _repeated(values)
        if dupes:
            _fail("%s must differ between instances; repeated: %s" % (what, ", ".join(map(str, dupes))))
    return plan


def postfix_instances_exporter(declared: Any) -> List[Dict[str, str]]:
    """The exporter's instance list: the primary, then every present declared instance.

    Without declared instances this is the exporter's historical default (the primary as
    transactional); with them, the primary's own mail is of class `default`.
    """
    present = [p for p in postfix_instance_plan(declared) if p["state"] == "present"]
    primary = {"name": "postfix", "mail_class": "default" if present else "transactional",
               "config_dir": "/etc/postfix", "queue_directory": "/var/spool/postfix"}
    return [primary] + [{"name": p["postmulti_name"], "mail_class": p["mail_class"], "config_dir": p["config_dir"],
                         "queue_directory": p["queue_directory"]} for p in present]


class FilterModule(object):
    def filters(self) -> Dict[str, Any]:
        return {"postfix_instance_plan": postfix_instance_plan, "postfix_instances_exporter": postfix_instances_exporter}
