"""InstancePool: least-loaded picks, prefix-cache affinity for prefill, down instances skipped."""
from __future__ import annotations

import pytest

from jaxserve.errors import EngineDeadError
from jaxserve.disagg.instances import InstancePool

S = 4


def _pool(num_prefill=2, num_decode=2, slack=2) -> InstancePool:
    pool = InstancePool([f"http://p{i}" for i in range(num_prefill)],
                        [f"http://d{i}" for i in range(num_decode)], page_size=S, prefix_slack=slack)
    for role in ("prefill", "decode"):
        for inst in pool.instances[role]:
            inst.up = True
    return pool


def test_least_loaded_counts_in_flight_and_polled_queue():
    pool = _pool()
    d0, d1 = pool.instances["decode"]
    d0.in_flight = 3
    assert pool.pick("decode") is d1
    d1.num_waiting = 5
    assert pool.pick("decode") is d0


def test_equal_loads_take_turns():
    pool = _pool()
    picked = {pool.pick("decode").url for _ in range(4)}
    assert picked == {"http://d0", "http://d1"}


def test_prefill_prefers_the_instance_holding_the_prefix():
    pool = _pool()
    p0, p1 = pool.instances["prefill"]
    prompt = list(range(3 * S + 1))                  # three full pages
    pool.record_prefix(prompt, p1)
    p1.in_flight = 2                                 # busier, but within the slack
    assert pool.pick_prefill(prompt + [99, 98]) == (p1, True)
    assert pool.pick_prefill(list(range(100, 120)))[0] is p0  # unrelated prompt: least loaded
    p1.in_flight = 3                                 # past the slack: load wins
    assert pool.pick_prefill(prompt) == (p0, False)
    p1.in_flight, p1.up = 0, False                   # down: never chosen
    assert pool.pick_prefill(prompt) == (p0, False)


def test_longest_cached_prefix_wins():
    pool = _pool()
    p0, p1 = pool.instances["prefill"]
    prompt = list(range(4 * S + 1))
    pool.record_prefix(prompt, p1)                   # four pages on p1
    pool.record_prefix(prompt[:S + 1], p0)           # later, the first page on p0
    p1.in_flight = 1                                 # p0 is the least loaded
    assert pool.pick_prefill(prompt) == (p1, True)


def test_no_live_instance_raises():
    pool = _pool()
    for inst in pool.instances["decode"]:
        pool.mark_down(inst)
    with pytest.raises(EngineDeadError, match="no decode worker"):
        pool.pick("decode")
    assert pool.num_up("decode") == 0 and pool.num_up("prefill") == 2
