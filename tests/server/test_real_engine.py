"""Features of the real engine through HTTP (tiny-random): sampling extras, the prefix cache, speculation.

The session's real server answers the plain requests; a second server speculates with a draft
model loaded from a GGUF file holding the target's own weights, so nearly every proposal must
be accepted, and a loader that got the draft wrong would show as rejections.
"""
from __future__ import annotations

import itertools

import jax
import openai
import pytest
from conftest import live_server, real_config

from jaxserve.config import load_config
from jaxserve.engine_factory import make_engine
from jaxserve.model.arch import tiny_arch
from jaxserve.model.llama import init_random_params
from tests.model.files import write_gguf

pytestmark = pytest.mark.slow
PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"
EXACT = {"ignore_eos": True}
_nonce = itertools.count()


def _complete(live, prompt: str = PROMPT, max_tokens: int = 16, **kw):
    """One completion choice through the openai client; ignore_eos, so always max_tokens tokens."""
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=300)
    extra = {**EXACT, **kw.pop("extra_body", {})}
    return client.completions.create(model=live.model, prompt=prompt, max_tokens=max_tokens,
                                     extra_body=extra, **kw).choices[0]


def test_top_k_1_and_min_p_near_1_equal_greedy(real_server):
    greedy = _complete(real_server, temperature=0).text
    top1 = [_complete(real_server, temperature=1.0, seed=s, extra_body={"top_k": 1}).text for s in (1, 2)]
    min_p = _complete(real_server, temperature=1.0, seed=1, extra_body={"min_p": 0.999}).text
    sampled = _complete(real_server, temperature=1.0, seed=1).text
    assert sampled != greedy            # the draw is free without the filters: they are what forces greedy
    assert top1 == [greedy, greedy]
    assert min_p == greedy


def test_repetition_penalty_breaks_a_greedy_loop(real_server):
    prompt = "a b c a b c a b c a b c a b c"

    def tokens(**extra) -> list[str]:
        choice = _complete(real_server, prompt, 24, temperature=0, logprobs=1, extra_body=extra)
        return choice.logprobs.tokens

    plain, penalized = tokens(), tokens(repetition_penalty=10.0)
    assert len(set(plain)) < len(plain) // 2, plain          # the greedy output repeats itself ...
    assert penalized != plain
    assert len(set(penalized)) > len(set(plain))             # ... and the penalty makes it vary


def test_prefix_cache_hits_across_requests(real_server):
    shared = f"Request {next(_nonce)}: " + "a long shared system prompt that fills several pages " * 8
    first = _complete(real_server, shared + " First question?", temperature=0).text
    before = real_server.metrics()
    second = _complete(real_server, shared + " First question?", temperature=0).text
    after = real_server.metrics()
    hits = after["jaxserve:prefix_cache_hits_total"] - before["jaxserve:prefix_cache_hits_total"]
    pages = len(real_server.engine.engine.tokenizer.encode(shared)) // real_server.config.cache.page_size
    assert hits >= pages - 1 > 2
    assert second == first


# ------------------------------------------------------------------------------------ speculation
SPEC_PROMPTS = ["a b c d e f g a b c d e f g a b c", "one two three four one two three four one two"]


@pytest.fixture(scope="module")
def spec_server(tmp_path_factory):
    """tiny-random speculating with a GGUF draft: the target's own weights, written as F32."""
    base = real_config()
    arch = tiny_arch(vocab_size=49152)
    draft = write_gguf(tmp_path_factory.mktemp("draft") / "tiny-draft.gguf", arch,
                       init_random_params(arch, jax.random.key(base.seed)))
    config = load_config(None, {
        "model": {"source": "tiny-random", "max_model_len": 512},
        "cache": {"num_pages": 256},
        "scheduler": {"max_num_seqs": 4, "max_num_batched_tokens": 256, "decode_buckets": [1, 2, 4],
                      "prefill_buckets": [16, 64, 256]},
        "server": {"warmup": False},
        "speculative": {"method": "draft", "draft_source": str(draft), "num_speculative_tokens": 3,
                        "max_batch_for_speculation": 64, "min_accepted_tokens": 0.0}})
    engine = make_engine(config)
    assert engine.model_name == "tiny-random"
    with live_server(engine, config, "real") as live:
        yield live


def _spec_counts(live) -> tuple[float, float]:
    m = live.metrics()
    return m["jaxserve:spec_proposed_tokens_total"], m["jaxserve:spec_accepted_tokens_total"]


def test_speculation_through_the_server_keeps_greedy_text(real_server, spec_server):
    assert real_server.engine.engine.tokenizer.vocab_size == 49152   # the draft's vocabulary above
    for prompt in SPEC_PROMPTS:
        want = _complete(real_server, prompt, 24, temperature=0).text
        proposed0, accepted0 = _spec_counts(spec_server)
        got = _complete(spec_server, prompt, 24, temperature=0).text
        proposed, accepted = (a - b for a, b in zip(_spec_counts(spec_server), (proposed0, accepted0)))
        assert got == want
        assert proposed > 0
        assert accepted >= 0.9 * proposed        # the draft is the target: a bad load would be rejected


@pytest.mark.parametrize("kind, kw", [("logprobs", {"logprobs": 2}), ("presence", {"presence_penalty": 0.5}),
                                      ("repetition", {"extra_body": {"repetition_penalty": 1.3}})])
def test_logprobs_and_penalties_decode_plainly(real_server, spec_server, kind, kw):
    want = _complete(real_server, SPEC_PROMPTS[0], 12, temperature=0, **dict(kw))
    before = _spec_counts(spec_server)
    got = _complete(spec_server, SPEC_PROMPTS[0], 12, temperature=0, **dict(kw))
    assert _spec_counts(spec_server) == before
    assert got.text == want.text
    if kind == "logprobs":
        assert got.logprobs.tokens == want.logprobs.tokens
