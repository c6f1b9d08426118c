"""The whole model on the Pallas kernels (interpreted) gives the same greedy tokens as on the
jnp references: the kernels are wired into prefill and decode with the right pages, lengths and
block tables, not only correct in isolation.

Interpret mode runs every grid program in Python-driven XLA, so the engines here are kept small:
short buckets, a 2-layer random model, and (marked slow) the real SmolLM2, whose varied tokens
make a wrong kernel show up where the random model's repetitive output might hide it. About 15 s
each on 2 CPU cores.
"""
from __future__ import annotations

import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.model.source import KNOWN_MODELS

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    # Longer than one page (16) and than the first prefill bucket, so prefill spans pages.
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
]

_SMALL = dict(model__max_model_len=256, cache__num_pages=64, scheduler__max_num_seqs=4,
              scheduler__max_num_batched_tokens=64, scheduler__prefill_buckets=[16, 64],
              scheduler__decode_buckets=[1, 2, 4])


def greedy_tokens(source: str, impl: str, prompts: list[str], max_tokens: int, **extra) -> list[list[int]]:
    interpret = impl != "reference"
    llm = LLM(model=source, kernel__attention_impl=impl, kernel__interpret=interpret,
              **{**_SMALL, **extra})
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens,
                                                ignore_eos=True), use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


@pytest.mark.parametrize("impl", ["triton"])
def test_tiny_model_greedy_matches_reference(impl):
    expected = greedy_tokens("tiny-random", "reference", PROMPTS, 8)
    got = greedy_tokens("tiny-random", impl, PROMPTS, 8)
    assert all(len(t) == 8 for t in expected)
    assert got == expected


@pytest.mark.slow
def test_smollm2_greedy_matches_reference():
    source = next(iter(KNOWN_MODELS))
    kw = dict(model__dtype="float32")
    expected = greedy_tokens(source, "reference", PROMPTS, 8, **kw)
    got = greedy_tokens(source, "triton", PROMPTS, 8, **kw)
    assert got == expected
