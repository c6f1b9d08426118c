"""After warm-up, requests sampled with the server's defaults or constrained by a grammar compile
nothing: warm-up compiles their sampler programs at every logits layout a step can have."""
import pytest

from jaxserve import SamplingParams
from jaxserve.sampling_defaults import resolve_defaults
from jaxserve.structured import StructuredOutput

from .conftest import make_llm

PROMPTS = ["The capital of France is", "Write a JSON object about a cat:", "1, 2, 3,"]


@pytest.fixture(scope="module")
def warm():
    llm = make_llm("tiny-random", model__max_model_len=128, cache__num_pages=64,
                   scheduler__max_num_seqs=4, scheduler__decode_buckets=[1, 2, 4],
                   scheduler__max_num_batched_tokens=64, scheduler__prefill_buckets=[16, 64])
    llm.engine.warmup()
    return llm


def _kinds(llm):
    defaults = resolve_defaults(getattr(llm.tokenizer, "sampling_defaults", {}), {})
    sampled = SamplingParams(max_tokens=6, seed=3, **defaults)
    schema = StructuredOutput(json={"type": "object", "properties": {"a": {"type": "integer"}}})
    return {"server defaults": sampled,
            "greedy, constrained": SamplingParams(max_tokens=6, temperature=0.0, structured=schema),
            "server defaults, constrained": sampled.replace(structured=schema)}


@pytest.mark.parametrize("kind", ["server defaults", "greedy, constrained", "server defaults, constrained"])
def test_no_compile_after_warmup(warm, kind):
    runner = warm.engine.runner
    before = runner.compiles.count
    params = _kinds(warm)[kind]
    for batch in (PROMPTS[:1], PROMPTS[:2], PROMPTS):   # batches of 1, 2 and 3 sampled rows
        outs = warm.generate(batch, params, use_tqdm=False)
        assert len(outs) == len(batch)
    assert runner.compiles.count == before, runner.compiles.keys[before:]


def test_the_check_can_fail():
    """Without the sampling warm-up, the first constrained batch needs a new program."""
    llm = make_llm("tiny-random", model__max_model_len=128, cache__num_pages=64,
                   scheduler__max_num_seqs=4, scheduler__decode_buckets=[1, 2, 4],
                   scheduler__max_num_batched_tokens=64, scheduler__prefill_buckets=[16, 64])
    from jaxserve.warmup import runner_plan
    runner_plan(llm.engine.runner, llm.engine.shapes).run()   # greedy sampling only
    before = llm.engine.runner.compiles.count
    llm.generate(PROMPTS[:1], _kinds(llm)["greedy, constrained"], use_tqdm=False)
    assert llm.engine.runner.compiles.count > before
