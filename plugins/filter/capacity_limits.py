# -*- coding: utf-8 -*-
# Copyright: durable-mx contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""capacity_limits: Postfix concurrency and safety limits from a small capacity model.

Model (all rates in messages per second):

* peak = target_rate x peak_factor.
* Durability costs fsyncs: cleanup fsyncs each queue file before the client
  gets 250, and the queue file's create/rename/unlink go through the
  filesystem journal.  fsyncs_per_message (default 2) counts both; the
  volume's measured fsync_rate after headroom must carry the peak, or the
  target is refused, saying by how much it is short.
* Little's law sizes the process pools: concurrent sessions = rate x time
  per session, divided by (1 - headroom) for spare capacity.
* queue_minfree: every smtpd process may be receiving a message of
  message_size_limit at once, so keep at least that much free (and at
  least minfree_fraction of the volume); below it Postfix answers 452 and
  the client retries later instead of the disk filling mid-message.
* in_flow_delay: while qmgr falls behind, each smtpd waits up to
  in_flow_delay per message; smtpd_process_limit / in_flow_delay should not
  exceed what the volume sustains, clamped to 1..10 s.
* With destination_rate (messages per second a receiving domain accepts)
  set, default_destination_rate_delay paces deliveries (Postfix then sends
  one at a time per destination); otherwise no delay and a destination
  concurrency of at most 20 (Postfix's default).
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, Mapping

from ansible.errors import AnsibleFilterError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)i?[bB]?\s*$")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}

DEFAULTS = {
    "peak_factor": 2.0,
    "headroom": 0.4,
    "fsyncs_per_message": 2.0,
    "smtp_session_seconds": 2.0,
    "delivery_seconds": 2.0,
    "message_size_limit": 10240000,
    "minfree_fraction": 0.05,
    "destination_rate": None,
}
REQUIRED = ("target_rate", "avg_message_size", "fsync_rate", "volume_size")


def to_number(name: str, value: Any, lowest: float, highest: float = float("inf")) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lowest <= value <= highest \
            or value != value:
        raise AnsibleFilterError("capacity_limits: %s=%r must be a number in [%s, %s]" % (name, value, lowest, highest))
    return float(value)


def to_bytes(name: str, value: Any) -> int:
    """Bytes from an int or a size string such as "20G", "512MiB", "10240000"."""
    if isinstance(value, bool):
        raise AnsibleFilterError("capacity_limits: %s=%r is not a size such as 10240000 or '20G'" % (name, value))
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        match = _SIZE_RE.match(str(value))
        if not match:
            raise AnsibleFilterError("capacity_limits: %s=%r is not a size such as 10240000 or '20G'" % (name, value))
        number = float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if number <= 0:
        raise AnsibleFilterError("capacity_limits: %s=%r must be positive" % (name, value))
    return int(number)


def sustainable_rate(fsync_rate: float, headroom: float, fsyncs_per_message: float) -> float:
    """Messages per second the volume carries while keeping the headroom free."""
    return fsync_rate * (1.0 - headroom) / fsyncs_per_message


def pool_size(rate: float, seconds: float, headroom: float, floor: int = 10) -> int:
    """Processes for `rate` work items lasting `seconds` each, with spare capacity."""
    return max(floor, int(math.ceil(rate * seconds / (1.0 - headroom))))


def limits(m: Mapping[str, Any]) -> Dict[str, Any]:
    """Pure computation on validated inputs (see capacity_limits)."""
    peak = m["target_rate"] * m["peak_factor"]
    ceiling = sustainable_rate(m["fsync_rate"], m["headroom"], m["fsyncs_per_message"])
    if peak > ceiling:
        needed = peak * m["fsyncs_per_message"] / (1.0 - m["headroom"])
        raise AnsibleFilterError(
            "capacity_limits: peak %.1f msg/s (target_rate %s x peak_factor %s) needs %.0f fsync/s at %s fsyncs "
            "per message with headroom %s, but the volume gives %s fsync/s: it carries at most %.1f msg/s, "
            "%.1f msg/s (%.0f%%) short. Lower the target, use a faster volume or spread the load over more nodes."
            % (peak, m["target_rate"], m["peak_factor"], needed, m["fsyncs_per_message"], m["headroom"],
               m["fsync_rate"], ceiling, peak - ceiling, 100.0 * (peak - ceiling) / peak))
    smtpd = pool_size(peak, m["smtp_session_seconds"], m["headroom"])
    default = pool_size(peak, m["delivery_seconds"], m["headroom"])
    minfree = max(smtpd * m["message_size_limit"], int(math.ceil(m["minfree_fraction"] * m["volume_size"])),
                  int(1.5 * m["message_size_limit"]))
    if minfree > m["volume_size"] // 2:
        raise AnsibleFilterError(
            "capacity_limits: queue_minfree would be %d bytes (%d smtpd processes x message_size_limit %d), more "
            "than half of volume_size %d; use a larger volume or a smaller message_size_limit"
            % (minfree, smtpd, m["message_size_limit"], m["volume_size"]))
    in_flow = min(10, max(1, int(math.ceil(smtpd / ceiling))))
    if m["destination_rate"]:
        rate_delay = int(math.ceil(1.0 / m["destination_rate"]))
        dest_concurrency = 1
    else:
        rate_delay = 0
        dest_concurrency = min(20, default)
    return {
        "postfix": {
            "default_process_limit": default,
            "smtpd_process_limit": smtpd,
            "in_flow_delay": "%ds" % in_flow,
            "queue_minfree": minfree,
            "message_size_limit": m["message_size_limit"],
            "default_destination_concurrency_limit": dest_concurrency,
            "default_destination_rate_delay": "%ds" % rate_delay,
        },
        "model": {
            "peak_rate": round(peak, 3),
            "sustainable_rate": round(ceiling, 3),
            "fsync_utilisation_at_peak": round(peak * m["fsyncs_per_message"] / m["fsync_rate"], 3),
            "bytes_per_second_at_peak": int(peak * m["avg_message_size"]),
        },
    }


def capacity_limits(spec: Mapping[str, Any]) -> Dict[str, Any]:
    """Capacity spec -> {"postfix": {main.cf parameters}, "model": {figures}}.

    Required: target_rate (msg/s), avg_message_size (bytes or "75k"),
    fsync_rate (measured fsync/s of the queue volume), volume_size (bytes or
    "20G").  Optional: peak_factor (>= 1, default 2), headroom (0.3-0.5,
    default 0.4), fsyncs_per_message (default 2), smtp_session_seconds and
    delivery_seconds (default 2), message_size_limit (default 10240000),
    minfree_fraction (default 0.05), destination_rate (msg/s per receiving
    domain, default none).
    """
    if not isinstance(spec, Mapping):
        raise AnsibleFilterError("capacity_limits: expected a mapping, got %r" % (spec,))
    unknown = sorted(set(spec) - set(REQUIRED) - set(DEFAULTS))
    if unknown:
        raise AnsibleFilterError("capacity_limits: unknown key(s) %s; known: %s"
                                 % (", ".join(unknown), ", ".join(REQUIRED + tuple(DEFAULTS))))
    for key in REQUIRED:
        if key not in spec:
            raise AnsibleFilterError("capacity_limits: %s is required" % key)
    m: Dict[str, Any] = dict(DEFAULTS)
    m.update(spec)
    m["target_rate"] = to_number("target_rate", m["target_rate"], 1e-6)
    m["peak_factor"] = to_number("peak_factor", m["peak_factor"], 1.0, 100.0)
    m["headroom"] = to_number("headroom", m["headroom"], 0.3, 0.5)
    m["fsync_rate"] = to_number("fsync_rate", m["fsync_rate"], 1.0)
    m["fsyncs_per_message"] = to_number("fsyncs_per_message", m["fsyncs_per_message"], 0.1, 100.0)
    m["smtp_session_seconds"] = to_number("smtp_session_seconds", m["smtp_session_seconds"], 0.001, 3600.0)
    m["delivery_seconds"] = to_number("delivery_seconds", m["delivery_seconds"], 0.001, 3600.0)
    m["minfree_fraction"] = to_number("minfree_fraction", m["minfree_fraction"], 0.0, 0.5)
    m["avg_message_size"] = to_bytes("avg_message_size", m["avg_message_size"])
    m["volume_size"] = to_bytes("volume_size", m["volume_size"])
    m["message_size_limit"] = to_bytes("message_size_limit", m["message_size_limit"])
    if m["destination_rate"] is not None:
        m["destination_rate"] = to_number("destination_rate", m["destination_rate"], 1e-6)
    return limits(m)


class FilterModule(object):
    def filters(self) -> Dict[str, Any]:
        return {"capacity_limits": capacity_limits}
