"""Continuous batching must not change any request's output."""
from __future__ import annotations

import pytest

from jaxserve import SamplingParams

from .conftest import make_llm
from .prompts import PROMPTS

pytestmark = pytest.mark.slow


def _mixed_prompts(tokenizer, n: int) -> list[list[int]]:
    """n prompts of 1..~120 tokens, cut from the shared prompts."""
    ids = [t for p in PROMPTS for t in tokenizer.encode(p)]
    return [ids[(7 * i) % len(ids):][: 1 + (i * 37) % 120] or ids[:3] for i in range(n)]


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
    SamplingParams(temperature=0.9, top_p=0.9, top_k=50, seed=1234, max_tokens=12, ignore_eos=True),
], ids=["greedy", "seeded"])
def test_alone_equals_in_batch_of_32(smollm, params):
    prompts = _mixed_prompts(smollm.tokenizer, 32)
    batch = smollm.generate(prompts, params)
    for i in (0, 5, 31):
        alone = smollm.generate([prompts[i]], params, use_tqdm=False)[0]
        assert alone.token_ids == batch[i].token_ids, f"prompt {i}"


def test_seeds_differ_and_repeat(smollm):
    p = SamplingParams(temperature=1.0, seed=7, max_tokens=16, ignore_eos=True)
    a, b = smollm.generate(["Tell me a story"] * 2, p, use_tqdm=False)
    c = smollm.generate(["Tell me a story"], p.replace(seed=8), use_tqdm=False)[0]
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_preemption_gives_same_output(tiny):
    """A pool too small for the batch forces preemption; outputs must equal the roomy run's.

    The roomy run is the session's tiny engine (512 pages): one engine fewer to build and compile."""
    prompts = ["Once upon a time", "The history of Rome", "def quicksort(xs):", "Dear diary,",
               "The recipe for bread", "In the beginning"]
    params = SamplingParams(temperature=0.8, seed=3, max_tokens=40, ignore_eos=True)
    tight = make_llm("tiny-random", cache__num_pages=12, cache__enable_prefix_caching=False)
    preempted_before = tiny.engine.stats().num_preemptions
    want = [o.token_ids for o in tiny.generate(prompts, params, use_tqdm=False)]
    assert tiny.engine.stats().num_preemptions == preempted_before     # roomy: nothing preempted
    got = [o.token_ids for o in tight.generate(prompts, params, use_tqdm=False)]
    assert tight.engine.stats().num_preemptions > 0
    assert got == want
    assert all(len(t) == 40 for t in got)


def test_preemption_real_model_greedy(smollm):
    prompts = PROMPTS[:4]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    want = [o.token_ids for o in smollm.generate(prompts, params, use_tqdm=False)]
    tight = make_llm(cache__num_pages=9, cache__enable_prefix_caching=False)
    got = [o.token_ids for o in tight.generate(prompts, params, use_tqdm=False)]
    assert tight.engine.stats().num_preemptions > 0
    assert got == want


def test_chunked_prefill_equals_single_chunk(smollm):
    """A 200-token prompt split into 16-token chunks gives the same tokens."""
    ids = [t for p in PROMPTS for t in smollm.tokenizer.encode(p)] * 2
    ids = ids[:200]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    want = smollm.generate([ids], params, use_tqdm=False)[0].token_ids
    chunked = make_llm(scheduler__max_num_batched_tokens=16, scheduler__prefill_buckets=[16])
    assert chunked.generate([ids], params, use_tqdm=False)[0].token_ids == want
