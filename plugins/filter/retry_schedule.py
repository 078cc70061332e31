# -*- coding: utf-8 -*-
# Copyright: durable-mx contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""retry_schedule: a human retry policy -> Postfix queue parameters and the retry times they give.

How Postfix schedules retries (Postfix source, src/qmgr/qmgr_active.c and
qmgr_scan.c, checked for 3.x):

* After a failed attempt, qmgr_active_done_3_generic() computes
  delay = now - create_time, clamps it to [minimal_backoff_time,
  maximal_backoff_time] and sets the deferred file's mtime to now + delay.
  The backoff therefore grows with the message's age, not per attempt.
* The deferred queue is scanned every queue_run_delay; a scan picks only
  files whose mtime is not in the future (qmgr_active_feed()).  So an
  attempt happens at the first scan at or after the mtime.
* A message older than maximal_queue_lifetime (bounce_queue_lifetime for
  bounces) at its next attempt is returned to the sender.

The simulation assumes an attempt takes no time and deferred-queue scans
fall on multiples of queue_run_delay after arrival.  To keep the promise
"no two attempts further apart than max_interval", max_interval must be a
multiple of queue_run_delay (otherwise the scan grid stretches it).
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Mapping

from ansible.errors import AnsibleFilterError

_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_ATTEMPTS = 100000
POLICY_KEYS = ("first_retry", "max_interval", "give_up_after", "warn_after", "bounce_give_up_after",
               "queue_run_delay")


def to_seconds(name: str, value: Any) -> int:
    """Seconds in a duration given as an int or a string like "90s", "5m", "1h", "5d", "1w"."""
    if isinstance(value, bool):
        raise AnsibleFilterError("retry_schedule: %s=%r is not a duration such as 300, '5m', '1h', '5d'" % (name, value))
    if isinstance(value, int):
        seconds = value
    else:
        match = _DURATION_RE.match(str(value))
        if not match:
            raise AnsibleFilterError("retry_schedule: %s=%r is not a duration such as 300, '5m', '1h', '5d'"
                                     % (name, value))
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds < 0:
        raise AnsibleFilterError("retry_schedule: %s=%r is negative" % (name, value))
    return seconds


def next_attempt(age: int, minimal: int, maximal: int, run_delay: int) -> int:
    """Age at the attempt after a failed one at `age` (Postfix qmgr backoff + scan grid)."""
    due = age + min(max(age, minimal), maximal)
    return int(math.ceil(due / float(run_delay))) * run_delay


def simulate(minimal: int, maximal: int, run_delay: int, lifetime: int) -> Dict[str, Any]:
    """Retry ages (seconds after arrival, first attempt at 0 excluded) up to lifetime.

    bounce_at is the first attempt age past the lifetime, when Postfix
    returns the message.
    """
    times: List[int] = []
    age = 0
    while len(times) < MAX_ATTEMPTS:
        age = next_attempt(age, minimal, maximal, run_delay)
        if age > lifetime:
            return {"retry_times": times, "bounce_at": age}
        times.append(age)
    raise AnsibleFilterError("retry_schedule: more than %d retries before giving up; raise first_retry or "
                             "max_interval" % MAX_ATTEMPTS)


def check_policy(s: Mapping[str, int]) -> None:
    """Refuse combinations Postfix would reject or that break the schedule's promises."""
    if s["first_retry"] < 1:
        raise AnsibleFilterError("retry_schedule: first_retry=%ds must be at least 1s" % s["first_retry"])
    if s["first_retry"] > s["max_interval"]:
        raise AnsibleFilterError("retry_schedule: first_retry=%ds is longer than max_interval=%ds"
                                 % (s["first_retry"], s["max_interval"]))
    if s["queue_run_delay"] < 1 or s["queue_run_delay"] > s["first_retry"]:
        raise AnsibleFilterError("retry_schedule: queue_run_delay=%ds must be between 1s and first_retry=%ds "
                                 "(a slower scan delays every retry)" % (s["queue_run_delay"], s["first_retry"]))
    if s["max_interval"] % s["queue_run_delay"]:
        raise AnsibleFilterError("retry_schedule: max_interval=%ds is not a multiple of queue_run_delay=%ds, so "
                                 "retries could come up to %ds apart"
                                 % (s["max_interval"], s["queue_run_delay"],
                                    int(math.ceil(s["max_interval"] / float(s["queue_run_delay"])))
                                    * s["queue_run_delay"]))
    if s["max_interval"] > s["give_up_after"]:
        raise AnsibleFilterError("retry_schedule: max_interval=%ds is longer than give_up_after=%ds"
                                 % (s["max_interval"], s["give_up_after"]))
    if s["bounce_give_up_after"] > s["give_up_after"]:
        raise AnsibleFilterError("retry_schedule: bounce_give_up_after=%ds is longer than give_up_after=%ds"
                                 % (s["bounce_give_up_after"], s["give_up_after"]))
    if s["warn_after"] and s["warn_after"] >= s["give_up_after"]:
        raise AnsibleFilterError("retry_schedule: warn_after=%ds is not shorter than give_up_after=%ds, the "
                                 "warning would never be sent" % (s["warn_after"], s["give_up_after"]))


def retry_schedule(policy: Mapping[str, Any]) -> Dict[str, Any]:
    """Map {first_retry, max_interval, give_up_after, warn_after?, bounce_give_up_after?, queue_run_delay?}.

    Returns {"postfix": {main.cf parameters}, "retry_times": [...], "bounce_at": s,
    "bounce_retry_times": [...]}.  warn_after 0 or absent disables delay
    warnings; queue_run_delay defaults to first_retry (Postfix's own
    defaults pair 300s with 300s); bounce_give_up_after defaults to
    give_up_after.
    """
    if not isinstance(policy, Mapping):
        raise AnsibleFilterError("retry_schedule: expected a mapping, got %r" % (policy,))
    unknown = sorted(set(policy) - set(POLICY_KEYS))
    if unknown:
        raise AnsibleFilterError("retry_schedule: unknown key(s) %s; known: %s" % (", ".join(unknown),
                                                                                 ", ".join(POLICY_KEYS)))
    for key in ("first_retry", "max_interval", "give_up_after"):
        if key not in policy:
            raise AnsibleFilterError("retry_schedule: %s is required" % key)
    s = {k: to_seconds(k, policy[k]) for k in policy}
    s.setdefault("warn_after", 0)
    s.setdefault("queue_run_delay", s["first_retry"])
    s.setdefault("bounce_give_up_after", s["give_up_after"])
    check_policy(s)
    normal = simulate(s["first_retry"], s["max_interval"], s["queue_run_delay"], s["give_up_after"])
    bounces = simulate(s["first_retry"], s["max_interval"], s["queue_run_delay"], s["bounce_give_up_after"])
    return {
        "postfix": {
            "minimal_backoff_time": "%ds" % s["first_retry"],
            "maximal_backoff_time": "%ds" % s["max_interval"],
            "queue_run_delay": "%ds" % s["queue_run_delay"],
            "maximal_queue_lifetime": "%ds" % s["give_up_after"],
            "bounce_queue_lifetime": "%ds" % s["bounce_give_up_after"],
            "delay_warning_time": "%ds" % s["warn_after"],
        },
        "retry_times": normal["retry_times"],
        "bounce_at": normal["bounce_at"],
        "bounce_retry_times": bounces["retry_times"],
    }


class FilterModule(object):
    def filters(self) -> Dict[str, Any]:
        return {"retry_schedule": retry_schedule}
