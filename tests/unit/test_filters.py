"""Filters: fixed examples and property tests."""

import pytest
from ansible.errors import AnsibleFilterError
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import capacity_limits as cl
import retry_schedule as rs
import tenant_slots as ts

# ---------------------------------------------------------------- retry_schedule


def test_retry_schedule_example():
    out = rs.retry_schedule({"first_retry": "5m", "max_interval": "1h", "give_up_after": "5d", "warn_after": "4h"})
    assert out["postfix"] == {
        "minimal_backoff_time": "300s", "maximal_backoff_time": "3600s", "queue_run_delay": "300s",
        "maximal_queue_lifetime": "432000s", "bounce_queue_lifetime": "432000s", "delay_warning_time": "14400s"}
    # Backoff = age clamped to [5m, 1h]: 5m, 10m, 20m, 40m, 80m, then hourly.
    assert out["retry_times"][:6] == [300, 600, 1200, 2400, 4800, 8400]
    assert out["retry_times"][-1] <= 432000 < out["bounce_at"]


def test_scan_grid_rounds_attempts_up():
    assert rs.next_attempt(0, 300, 3600, 240) == 480  # due at 300, next scan at 480


@pytest.mark.parametrize("policy,fragment", [
    ({"first_retry": "2h", "max_interval": "1h", "give_up_after": "5d"}, "first_retry=7200s is longer"),
    ({"first_retry": "5m", "max_interval": "1h", "give_up_after": "5d", "queue_run_delay": "7m"},
     "queue_run_delay=420s"),
    ({"first_retry": "5m", "max_interval": "50m", "give_up_after": "5d", "queue_run_delay": "4m"},
     "not a multiple of queue_run_delay=240s"),
    ({"first_retry": "5m", "max_interval": "1h", "give_up_after": "5d", "warn_after": "6d"}, "warn_after=518400s"),
    ({"first_retry": "5 minutes", "max_interval": "1h", "give_up_after": "5d"}, "first_retry='5 minutes'"),
    ({"first_retry": "5m", "max_interval": "1h"}, "give_up_after is required"),
    ({"first_retry": "5m", "max_interval": "1h", "give_up_after": "5d", "retries": 3}, "unknown key(s) retries"),
])
def test_retry_schedule_refuses_bad_policies(policy, fragment):
    with pytest.raises(AnsibleFilterError) as info:
        rs.retry_schedule(policy)
    assert fragment in str(info.value)


@settings(max_examples=200, deadline=None)
@given(run_delay=st.integers(1, 600), first_mult=st.integers(1, 12), max_mult=st.integers(1, 48),
       lifetime=st.integers(0, 10 * 86400))
def test_retry_times_increase_and_respect_max_interval(run_delay, first_mult, max_mult, lifetime):
    first = run_delay * first_mult
    maximal = max(first, run_delay * max_mult * first_mult)
    maximal -= maximal % run_delay
    policy = {"first_retry": first, "max_interval": maximal, "give_up_after": max(lifetime, maximal),
              "queue_run_delay": run_delay}
    assume(policy["give_up_after"] < maximal * rs.MAX_ATTEMPTS // 2)  # beyond that it is refused
    out = rs.retry_schedule(policy)
    times = [0] + out["retry_times"]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(g > 0 for g in gaps)
    assert all(g <= maximal for g in gaps)
    assert all(g >= first for g in gaps)
    assert out["bounce_at"] - times[-1] <= maximal
    assert out["retry_times"] == sorted(set(out["retry_times"]))

# ---------------------------------------------------------------- tenant_slots


def test_tenant_slots_example():
    assert ts.tenant_slots({"gold": 5, "silver": 3, "bronze": 1}, 100, 5) == {"gold": 52, "silver": 33, "bronze": 15}


@pytest.mark.parametrize("args,fragment", [
    (({"a": 1, "b": 1}, 3, 2), "total=3 cannot give 2 tenants minimum=2"),
    (({"a": -1}, 10, 1), "weight of tenant 'a' is -1"),
    (({"a": "x"}, 10, 1), "weight of tenant 'a' is 'x'"),
    (({}, 10, 1), "weights={}"),
    (({"a": 1}, 0, 0), "total=0"),
    (({"a": 1}, 10, True), "minimum=True"),
])
def test_tenant_slots_refuses_bad_input(args, fragment):
    with pytest.raises(AnsibleFilterError) as info:
        ts.tenant_slots(*args)
    assert fragment in str(info.value)


@settings(max_examples=300, deadline=None)
@given(weights=st.dictionaries(st.text("abcdefgh", min_size=1, max_size=4),
                               st.one_of(st.integers(0, 1000), st.floats(0, 1000)), min_size=1, max_size=12),
       minimum=st.integers(0, 20), extra=st.integers(0, 2000))
def test_slots_sum_to_at_most_total_and_keep_minimum(weights, minimum, extra):
    total = max(1, minimum * len(weights) + extra)
    slots = ts.tenant_slots(weights, total, minimum)
    assert set(slots) == set(weights)
    assert sum(slots.values()) <= total
    assert all(v >= minimum for v in slots.values())
    heavier = sorted(weights, key=lambda n: weights[n])
    for light, heavy in zip(heavier, heavier[1:]):
        if weights[heavy] > weights[light]:
            assert slots[heavy] >= slots[light]

# ---------------------------------------------------------------- capacity_limits

BASE = {"target_rate": 50, "avg_message_size": "75k", "fsync_rate": 2000, "volume_size": "20G",
        "headroom": 0.4, "peak_factor": 2}


def test_capacity_example():
    out = cl.capacity_limits(BASE)
    pf = out["postfix"]
    assert pf["smtpd_process_limit"] == 334 and pf["default_process_limit"] == 334
    assert pf["queue_minfree"] == 334 * 10240000
    assert pf["in_flow_delay"] == "1s" and pf["default_destination_rate_delay"] == "0s"
    assert out["model"]["sustainable_rate"] == 600.0


def test_impossible_target_is_refused_with_the_shortfall():
    with pytest.raises(AnsibleFilterError) as info:
        cl.capacity_limits(dict(BASE, target_rate=400))
    text = str(info.value)
    assert "peak 800.0 msg/s" in text and "at most 600.0 msg/s" in text and "200.0 msg/s (25%) short" in text


@pytest.mark.parametrize("key,value", [("headroom", 0.2), ("headroom", 0.6), ("target_rate", -1),
                                       ("volume_size", "lots"), ("peak_factor", 0.5), ("fsync_rate", "fast")])
def test_capacity_bad_values_are_named(key, value):
    with pytest.raises(AnsibleFilterError) as info:
        cl.capacity_limits(dict(BASE, **{key: value}))
    assert "%s=%r" % (key, value) in str(info.value)


def test_capacity_destination_rate():
    pf = cl.capacity_limits(dict(BASE, destination_rate=0.5))["postfix"]
    assert pf["default_destination_rate_delay"] == "2s" and pf["default_destination_concurrency_limit"] == 1


@settings(max_examples=200, deadline=None)
@given(low=st.floats(0.01, 300), high=st.floats(0.01, 300), headroom=st.floats(0.3, 0.5),
       fsync=st.floats(1000, 5000))
def test_capacity_limits_monotone_in_target_rate(low, high, headroom, fsync):
    low, high = sorted((low, high))
    spec = dict(BASE, headroom=headroom, fsync_rate=fsync, volume_size="2T")
    try:
        big = cl.capacity_limits(dict(spec, target_rate=high))["postfix"]
    except AnsibleFilterError:
        return  # infeasible target: refusal is the tested behaviour elsewhere
    small = cl.capacity_limits(dict(spec, target_rate=low))["postfix"]
    for key in ("default_process_limit", "smtpd_process_limit", "queue_minfree",
                "default_destination_concurrency_limit"):
        assert small[key] <= big[key], key
    assert int(small["in_flow_delay"][:-1]) <= int(big["in_flow_delay"][:-1])
