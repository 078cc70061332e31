# -*- coding: utf-8 -*-
# Copyright: durable-mx contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tenant_slots: share a process budget between tenants by weight, each keeping a minimum.

Every tenant first gets `minimum` slots; the rest is shared in proportion to
the weights by the largest-remainder method (whole quotas first, then one
slot each to the largest fractional remainders, ties by tenant name), so the
result is deterministic, sums to exactly `total` and never drops below the
minimum.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

from ansible.errors import AnsibleFilterError


def _check_int(name: str, value: Any, lowest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise AnsibleFilterError("tenant_slots: %s=%r must be an integer >= %d" % (name, value, lowest))
    return value


def _check_weights(weights: Any) -> Dict[str, float]:
    if not isinstance(weights, Mapping) or not weights:
        raise AnsibleFilterError("tenant_slots: weights=%r must be a non-empty mapping tenant -> weight" % (weights,))
    checked = {}
    for tenant, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0 or weight != weight:
            raise AnsibleFilterError("tenant_slots: weight of tenant %r is %r; it must be a number >= 0"
                                     % (tenant, weight))
        checked[str(tenant)] = float(weight)
    return checked


def allocate(weights: Mapping[str, float], total: int, minimum: int) -> Dict[str, int]:
    """Pure allocation (inputs already validated)."""
    names = sorted(weights)
    spare = total - minimum * len(names)
    weight_sum = sum(weights.values())
    # All-zero weights share equally.
    shares = {n: (weights[n] / weight_sum if weight_sum else 1.0 / len(names)) * spare for n in names}
    slots = {n: minimum + int(shares[n]) for n in names}
    left = total - sum(slots.values())
    by_remainder = sorted(names, key=lambda n: (-(shares[n] - int(shares[n])), n))
    for name in by_remainder[:left]:
        slots[name] += 1
    return slots


def tenant_slots(weights: Mapping[str, Any], total: int, minimum: int = 1) -> Dict[str, int]:
    """{tenant: weight}, total slots, minimum per tenant -> {tenant: process limit}."""
    checked = _check_weights(weights)
    total = _check_int("total", total, 1)
    minimum = _check_int("minimum", minimum, 0)
    if total < minimum * len(checked):
        raise AnsibleFilterError("tenant_slots: total=%d cannot give %d tenants minimum=%d each (needs %d)"
                                 % (total, len(checked), minimum, minimum * len(checked)))
    return allocate(checked, total, minimum)


class FilterModule(object):
    def filters(self) -> Dict[str, Any]:
        return {"tenant_slots": tenant_slots}
