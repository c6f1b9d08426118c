"""The dashboard's state snapshot (jaxserve/engine_state.py) against the engine's own truth:
page owners from the allocator and the sequences' page lists, queue lengths from the scheduler,
one step record per Engine.step with the plan's token counts; and its size stays bounded."""
from __future__ import annotations

import json

from jaxserve import engine_state
from jaxserve.engine_state import CACHED, FREE, MAX_CELLS, RESERVED, SHARED, STEP_HISTORY
from jaxserve.llm import LLM
from jaxserve.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def _engine(**overrides):
    base = dict(cache__num_pages=64, cache__page_size=16, model__max_model_len=512,
                scheduler__max_num_batched_tokens=64, scheduler__prefill_buckets=[16, 64])
    base.update(overrides)
    return LLM(model="tiny-random", **base).engine


def _expected_cell(engine, page: int, requests: list[dict]) -> int:
    alloc = engine.scheduler.allocator
    if page == 0:
        return RESERVED
    refs = alloc.ref_count(page)
    if refs == 0:
        return CACHED if alloc.is_cached(page) else FREE
    owners = [s for s in engine.scheduler.running + list(engine.scheduler.waiting) if page in s.pages]
    if refs > 1:
        assert len(owners) == refs
        return SHARED
    (owner,) = owners
    return next(i for i, r in enumerate(requests) if (r["id"], r["n"]) == (owner.request_id, owner.index))


def _check_truth(engine, state: dict) -> None:
    sched = engine.scheduler
    pool = state["pool"]
    assert pool["num_pages"] == len(pool["cells"]) == sched.allocator.num_pages
    assert pool["used"] == sched.allocator.num_used
    for page, value in enumerate(pool["cells"]):
        assert value == _expected_cell(engine, page, state["requests"]), page
    queues = state["queues"]
    assert queues["decoding"] == sum(s.is_decoding for s in sched.running)
    assert queues["prefilling"] == sum(not s.is_decoding for s in sched.running)
    assert queues["waiting"] + queues["preempted"] == len(sched.waiting)
    assert {(r["id"], r["n"]) for r in state["requests"]} == \
        {(s.request_id, s.index) for s in sched.running + list(sched.waiting)}
    for r in state["requests"]:
        seq = next(s for s in sched.running + list(sched.waiting) if (s.request_id, s.index) == (r["id"], r["n"]))
        assert (r["pages"], r["computed_tokens"], r["output_tokens"]) == \
            (len(seq.pages), seq.num_computed, len(seq.output_ids))


def test_snapshot_matches_the_engine_step_by_step():
    """Three requests sharing a prefix (so pages are shared), prompts longer than one step's
    budget (so some are prefilling while others decode), checked after every step; then the
    step records add up to the work done and the finished requests are listed."""
    engine = _engine()
    prompts = [list(range(1, 40 + 30 * i)) for i in range(3)]
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, GREEDY)
    seen = set()
    steps = 0
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
        state = engine.debug_state()
        _check_truth(engine, state)
        seen |= {k for k, n in state["queues"].items() if n}
        seen |= {"shared"} if SHARED in state["pool"]["cells"] else set()
    assert {"decoding", "prefilling", "shared"} <= seen
    state = engine.debug_state()
    assert state["num_steps"] == len(state["steps"]) == steps
    computed = sum(s["prefill_tokens"] + s["decode_rows"] for s in state["steps"])
    hits = engine.scheduler.allocator.prefix_hits * engine.scheduler.page_size
    # Every prompt token was computed by a prefill chunk or came from the prefix cache; the last
    # generated token of each request is never fed back.
    assert computed == sum(len(p) for p in prompts) - hits + 3 * (GREEDY.max_tokens - 1)
    assert all(s["seconds"] > 0 for s in state["steps"])
    assert sorted(f["id"] for f in state["finished"]) == ["r0", "r1", "r2"]
    assert all(f["output_tokens"] == GREEDY.max_tokens and f["ttft_s"] > 0 for f in state["finished"])
    assert len(state["itl_s"]) == 3 * (GREEDY.max_tokens - 1)
    assert state["pool"]["counts"]["owned"] == 0 and state["queues"]["decoding"] == 0


def test_preempted_requests_show_as_preempted():
    """A pool too small for both requests: one is preempted and the feed says so."""
    engine = _engine(cache__num_pages=8, scheduler__max_num_seqs=2)
    for i in range(2):
        engine.add_request(f"p{i}", list(range(1 + 7 * i, 50 + 7 * i)), SamplingParams(
            temperature=0.0, max_tokens=40, ignore_eos=True))
    preempted = False
    while engine.has_unfinished_requests():
        engine.step()
        state = engine.debug_state()
        _check_truth(engine, state)
        preempted |= state["queues"]["preempted"] > 0
    assert preempted and engine.scheduler.num_preemptions > 0


def test_size_is_bounded_with_many_pages_and_steps(monkeypatch):
    """20,000 pages and more steps than the history keeps: at most MAX_CELLS cells, STEP_HISTORY
    steps, MAX_REQUESTS requests; a grouped cell shows an owner if any of its pages has one."""
    monkeypatch.setattr(engine_state, "MAX_REQUESTS", 2)
    engine = _engine(cache__num_pages=20_000, cache__page_size=16)
    for i in range(3):
        engine.add_request(f"b{i}", list(range(1 + 50 * i, 30 + 50 * i)), SamplingParams(
            temperature=0.0, max_tokens=STEP_HISTORY + 20, ignore_eos=True))
    for _ in range(STEP_HISTORY + 10):
        engine.step()
    state = engine.debug_state()
    pool = state["pool"]
    assert pool["pages_per_cell"] == -(-20_000 // MAX_CELLS) and len(pool["cells"]) <= MAX_CELLS
    assert len(state["steps"]) == STEP_HISTORY and state["num_steps"] == STEP_HISTORY + 10
    assert len(state["requests"]) == 2 and state["requests_left_out"] == 1
    assert pool["counts"]["owned"] + pool["counts"]["shared"] == pool["used"]
    # Each grouped cell shows one of its pages' values, an owner where any page has one; the
    # third request (left out of `requests`) shows as shared.
    sched = engine.scheduler
    shown = {(r["id"], r["n"]): i for i, r in enumerate(state["requests"])}
    truth = []
    for page in range(pool["num_pages"]):
        owner = [s for s in sched.running if page in s.pages]
        if page == 0:
            truth.append(RESERVED)
        elif not owner:
            truth.append(CACHED if sched.allocator.is_cached(page) else FREE)
        else:
            truth.append(shown.get((owner[0].request_id, owner[0].index), SHARED) if len(owner) == 1 else SHARED)
    group = pool["pages_per_cell"]
    for c, value in enumerate(pool["cells"]):
        pages = truth[c * group:(c + 1) * group]
        assert value in pages and (value >= 0) == any(v >= 0 for v in pages), c
    assert {v for v in pool["cells"] if v >= 0} == {0, 1}
    assert pool["counts"]["shared"] == truth.count(SHARED) > 0
    assert len(json.dumps(state)) < 150_000


def _strings(x):
    if isinstance(x, str):
        yield x
    elif isinstance(x, dict):
        for k, v in x.items():
            yield from _strings(v)
    elif isinstance(x, list):
        for v in x:
            yield from _strings(v)


def test_no_prompt_or_output_text():
    """The feed carries ids and counts only: every string value in it is a request id, a role,
    a queue state or a finish reason, never a prompt or generated text."""
    llm = LLM(model="tiny-random", cache__num_pages=64, model__max_model_len=512)
    outs = llm.generate(["zebra quartz secret", "another private prompt"],
                        SamplingParams(temperature=0.0, max_tokens=8))
    assert all(o.outputs[0].token_ids for o in outs)
    state = llm.engine.debug_state()
    allowed = ({o.request_id for o in outs} | {"colocated"}
               | {"waiting", "prefilling", "decoding", "preempted", "transfer", "length", "stop"})
    assert set(_strings(state)) <= allowed and {f["id"] for f in state["finished"]} == {o.request_id for o in outs}
