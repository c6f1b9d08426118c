"""Scenarios whose outputs were recorded from the split path (one model pass per kind of row:
decodes, then verifies, then prefill chunks; main at 325e990) into data/split_outputs.json.

Run with the old tree first on the path to record again:
  PYTHONPATH=/work/main python -m tests.engine.split_oracle tests/engine/data/split_outputs.json
Every scenario uses the tiny random model in float32, where outputs are exact whatever the
batch around a request (in bf16 they are not, issue 20), with a small step budget so that
decodes, verifies and chunks after cached prefixes share steps.
"""
from __future__ import annotations

import json
import sys

from jaxserve import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
SEEDED = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, seed=1234, max_tokens=24, ignore_eos=True)
SMALL = dict(scheduler__max_num_batched_tokens=64, scheduler__prefill_buckets=[16, 64])


def _prompts(tokenizer, n: int, longest: int) -> list[list[int]]:
    from tests.engine.prompts import PROMPTS
    ids = [t for p in PROMPTS for t in tokenizer.encode(p)] * 4
    return [ids[(11 * i) % 97:][: 1 + (i * 53) % longest] for i in range(n)]


def _repetitive(tokenizer, n: int) -> list[list[int]]:
    """Prompts that repeat themselves, so n-gram proposals are often accepted."""
    base = tokenizer.encode("the cat sat on the mat and the dog sat on the log; ")
    return [(base * 6)[i:i + 20 + 9 * i] for i in range(n)]


SCENARIOS = {  # name: (engine overrides, prompts(tokenizer), params)
    "chunked-greedy": (SMALL, lambda t: _prompts(t, 12, 300), GREEDY),
    "chunked-seeded": (SMALL, lambda t: _prompts(t, 12, 300), SEEDED),
    "prefix-hits-n2": (dict(SMALL, cache__enable_prefix_caching=True),
                       lambda t: [_prompts(t, 3, 300)[2][:100] + p for p in _prompts(t, 6, 40)],
                       SEEDED.replace(n=2)),
    "preemption": (dict(SMALL, cache__num_pages=14, cache__enable_prefix_caching=False),
                   lambda t: _prompts(t, 6, 60), SEEDED.replace(max_tokens=40)),
    "speculation-greedy": (dict(SMALL, speculative__method="ngram", speculative__num_speculative_tokens=3),
                           lambda t: _repetitive(t, 6) + _prompts(t, 4, 200), GREEDY),
    "speculation-seeded": (dict(SMALL, speculative__method="ngram", speculative__num_speculative_tokens=3),
                           lambda t: _repetitive(t, 6) + _prompts(t, 4, 200), SEEDED),
}


def run(name: str, **extra) -> tuple[list[list[int]], object]:
    """Token ids of every output (n per prompt, in order) and the engine (extra: more overrides)."""
    from tests.engine.conftest import make_llm
    overrides, prompts, params = SCENARIOS[name]
    llm = make_llm("tiny-random", **overrides, **extra)
    outs = llm.generate(prompts(llm.tokenizer), params, use_tqdm=False)
    ids = [list(o.token_ids) for out in outs for o in (out.outputs if hasattr(out, "outputs") else [out])]
    return ids, llm.engine


if __name__ == "__main__":
    recorded = {}
    for name in SCENARIOS:
        recorded[name], engine = run(name)
        stats = engine.stats()
        print(name, stats.num_preemptions, stats.prefix_cache_hits, stats.spec_accepted_tokens, file=sys.stderr)
    with open(sys.argv[1], "w") as f:
        json.dump(recorded, f)
