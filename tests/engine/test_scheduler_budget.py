"""The scheduler's token budget, on the host alone (no model)."""
from __future__ import annotations

from jaxserve.config import CacheConfig, SchedulerConfig
from jaxserve.outputs import RequestMetrics
from jaxserve.sampling_params import SamplingParams
from jaxserve.scheduler import Scheduler
from jaxserve.sequence import Sequence


def _seq(i: int, prompt_len: int) -> Sequence:
    return Sequence(seq_id=i, request_id=f"r{i}", index=0, prompt_ids=list(range(1, prompt_len + 1)),
                    params=SamplingParams(max_tokens=8), seed=0, metrics=RequestMetrics(arrival_s=0.0))


def test_decodes_do_not_shrink_the_prefill_chunk():
    """Decodes run in their own model call, so a prompt beside them still gets a whole budget:
    a shrunken chunk would be padded to the same bucket and split the prompt in two steps."""
    sched = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64),
                      CacheConfig(page_size=16, num_pages=64, enable_prefix_caching=False),
                      max_prefill_seqs=2)
    seqs = [_seq(i, 64) for i in range(3)]
    for s in seqs:
        sched.add(s)
    plan = sched.schedule()
    assert [(c.seq, c.length) for c in plan.prefills] == [(seqs[0], 64)]

    seqs[0].num_computed = 64            # the prefill ran and sampled a first token
    seqs[0].output_ids.append(7)
    plan = sched.schedule()
    assert plan.decodes == [seqs[0]]
    assert [(c.seq, c.length) for c in plan.prefills] == [(seqs[1], 64)]


def test_prefill_chunks_share_one_budget():
    sched = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64),
                      CacheConfig(page_size=16, num_pages=64, enable_prefix_caching=False),
                      max_prefill_seqs=2)
    a, b = _seq(0, 40), _seq(1, 40)
    sched.add(a)
    sched.add(b)
    plan = sched.schedule()
    assert [(c.seq, c.start, c.length) for c in plan.prefills] == [(a, 0, 40), (b, 0, 24)]
