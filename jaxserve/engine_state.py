"""What the dashboard shows: a bounded, read-only snapshot of one engine, and the recent history
(steps, finished requests) it is built from. Host only; called on the engine's own thread.

The snapshot never carries prompt or output text, only ids and counts, so the state feed may be
shown to an operator who must not read users' requests. Its size is bounded whatever the load:
at most MAX_CELLS pool cells (pages are grouped when the pool is larger), MAX_REQUESTS
sequences, STEP_HISTORY steps and FINISHED_HISTORY finished requests.

Pool cells hold one integer each:
  FREE (-1)       no owner, not in the prefix cache
  CACHED (-2)     in the prefix cache with no owner (evictable)
  SHARED (-3)     held by more than one sequence (a prefix-cache hit)
  RESERVED (-4)   page 0, where padding tokens write
  k >= 0          owned by one sequence: index k of the snapshot's `requests`
A grouped cell (several pages) shows the busiest of its pages: the owner of most of them, then
shared, cached, free. Pages owned by a sequence left out of `requests` (past MAX_REQUESTS) count as shared.
"""
from __future__ import annotations

import dataclasses
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

FREE, CACHED, SHARED, RESERVED = -1, -2, -3, -4
MAX_CELLS = 4096
MAX_REQUESTS = 256
STEP_HISTORY = 256
FINISHED_HISTORY = 128
ITL_HISTORY = 2048


@dataclass
class StepRecord:
    start_s: float          # time.perf_counter() when the step began
    seconds: float          # the whole Engine.step call: plan, pack, dispatch, read back
    prefill_tokens: int
    prefill_seqs: int
    decode_rows: int
    verify_tokens: int      # speculative tokens checked this step (beyond one per decode row)
    programs_built: int     # programs compiled or loaded during the step (0 in steady state)


class EngineHistory:
    """The last steps and finished requests of one engine, in bounded deques."""

    def __init__(self) -> None:
        self.steps: deque[StepRecord] = deque(maxlen=STEP_HISTORY)
        self.finished: deque[dict[str, Any]] = deque(maxlen=FINISHED_HISTORY)
        self.itl_s: deque[float] = deque(maxlen=ITL_HISTORY)
        self.num_steps = 0

    def record_step(self, start_s: float, plan, programs_built: int) -> None:
        self.num_steps += 1
        self.steps.append(StepRecord(
            start_s=start_s, seconds=time.perf_counter() - start_s,
            prefill_tokens=sum(c.length for c in plan.prefills), prefill_seqs=len(plan.prefills),
            decode_rows=len(plan.decodes), verify_tokens=sum(plan.spec_lens),
            programs_built=programs_built))

    def record_finished(self, seq) -> None:
        m = seq.metrics
        itl = m.itl_s
        self.itl_s.extend(itl)
        self.finished.append({
            "id": seq.request_id, "n": seq.index, "reason": _reason(seq),
            "prompt_tokens": len(seq.prompt_ids), "output_tokens": len(seq.output_ids),
            "arrival_s": m.arrival_s, "first_token_s": m.first_token_s,
            "finished_s": m.finished_s or time.perf_counter(),
            "ttft_s": m.ttft_s, "itl_mean_s": sum(itl) / len(itl) if itl else None,
            "preemptions": seq.num_preemptions})


def _reason(seq) -> str | None:
    reason = seq.finish_reason
    return None if reason is None else getattr(reason, "value", str(reason))


def _state(seq, waiting: bool, adopted: bool) -> str:
    if adopted:
        return "transfer"          # its K/V arrived from a prefill engine; joins the batch soon
    if waiting:
        return "preempted" if seq.num_preemptions else "waiting"
    return "decoding" if seq.is_decoding else "prefilling"


def engine_snapshot(engine, role: str = "colocated") -> dict[str, Any]:
    """The dashboard's view of an Engine (jaxserve.engine.Engine); see the module docstring."""
    sched = engine.scheduler
    alloc = sched.allocator
    now = time.perf_counter()
    seqs = ([(s, _state(s, False, False)) for s in sched.running]
            + [(s, _state(s, True, False)) for s in sched.waiting]
            + [(s, _state(s, False, True)) for s in sched.adopted])
    shown = seqs[:MAX_REQUESTS]
    requests = []
    owner_of: dict[int, int] = {}
    stored_tokens = 0
    for i, (seq, state) in enumerate(shown):
        m = seq.metrics
        requests.append({
            "id": seq.request_id, "n": seq.index, "state": state,
            "prompt_tokens": len(seq.prompt_ids), "output_tokens": len(seq.output_ids),
            "computed_tokens": seq.num_computed, "pages": len(seq.pages),
            "age_s": now - m.arrival_s,
            "ttft_s": m.ttft_s, "preemptions": seq.num_preemptions})
        for page in seq.pages:
            owner_of.setdefault(page, i)
    for seq, _ in seqs:
        stored_tokens += min(seq.num_computed, len(seq.pages) * alloc.page_size)

    def page_value(page: int) -> int:
        if page == 0:
            return RESERVED
        refs = alloc.ref_count(page)
        if refs == 0:
            return CACHED if alloc.is_cached(page) else FREE
        owner = owner_of.get(page)
        return owner if refs == 1 and owner is not None else SHARED

    values = [page_value(p) for p in range(alloc.num_pages)]
    group = -(-alloc.num_pages // MAX_CELLS)
    cells = [_busiest(values[start:start + group]) for start in range(0, alloc.num_pages, group)]
    owned_slots = sum(len(seq.pages) for seq, _ in seqs)
    counts = {"free": values.count(FREE), "cached": values.count(CACHED), "shared": values.count(SHARED),
              "owned": sum(1 for v in values if v >= 0)}
    stats = dataclasses.asdict(engine.stats())
    history = engine.history
    return {
        "role": role,
        "now_s": now,
        "pool": {
            "num_pages": alloc.num_pages, "page_size": alloc.page_size, "pages_per_cell": group,
            "cells": cells, "used": alloc.num_used, "usable": alloc.num_usable,
            "counts": counts,
            # Slots of owned pages that hold no token (the last page of each sequence, mostly).
            "fragmentation": 1.0 - stored_tokens / (owned_slots * alloc.page_size) if owned_slots else 0.0,
            "prefix_hit_rate": alloc.prefix_hits / alloc.prefix_queries if alloc.prefix_queries else None,
        },
        "queues": {name: sum(1 for _, state in seqs if state == name)
                   for name in ("waiting", "prefilling", "decoding", "preempted", "transfer")},
        "requests": requests,
        "requests_left_out": len(seqs) - len(shown),
        "steps": [dataclasses.asdict(r) for r in history.steps],
        "num_steps": history.num_steps,
        "finished": list(history.finished),
        "itl_s": list(history.itl_s)[-512:],
        "stats": stats,
    }


def _busiest(values) -> int:
    """Of a cell's page values, the one to show: its most frequent owner, else shared, cached,
    free (reserved last)."""
    owners = [v for v in values if v >= 0]
    if owners:
        return max(set(owners), key=lambda v: (owners.count(v), -v))
    rank = {SHARED: 1, CACHED: 2, FREE: 3, RESERVED: 4}
    return min(values, key=rank.__getitem__)
