"""One ragged model pass per step gives exactly the tokens the old split path gave (a pass per
kind of row), recorded from it in data/split_outputs.json (see split_oracle.py; re-recorded at main 10d4c77, the blocked inverse-CDF draw): mixed batches
with chunked prefill, prefix hits with n = 2, preemption and n-gram speculation, greedy and
seeded, in float32; with asynchronous scheduling and without."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.engine.split_oracle import SCENARIOS, run

RECORDED = json.loads((Path(__file__).parent / "data" / "split_outputs.json").read_text())


CASES = [(name, mode) for name in SCENARIOS
         for mode in (("sync",) if name.startswith("speculation") else ("async", "sync"))]


@pytest.mark.parametrize("name, mode", CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_outputs_equal_the_split_path(name, mode):
    """Both with asynchronous scheduling (the default) and one step at a time; speculation
    always reads each step back before the next (engine.py), so it runs once."""
    got, engine = run(name, scheduler__async_scheduling=mode == "async")
    stats = engine.stats()
    assert got == RECORDED[name]
    assert all(len(ids) == SCENARIOS[name][2].max_tokens for ids in got)
    assert (engine.steps_overlapped > 0) == (mode == "async")
    # Each scenario exercises what it is named for.
    if name.startswith("prefix"):
        assert stats.prefix_cache_hits > 0
    if name == "preemption":
        assert stats.num_preemptions > 0
    if name.startswith("speculation"):
        assert stats.spec_accepted_tokens > 0
