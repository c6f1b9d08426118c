"""Speculative decoding: greedy output unchanged, sampled output keeps the target's distribution."""
from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit

import jax

from jaxserve import SamplingParams, load_config
from jaxserve.engine import Engine
from jaxserve.model.arch import ModelArch
from jaxserve.model.llama import init_random_params
from jaxserve.outputs import FinishReason
from jaxserve.tokenizer import Tokenizer

from .conftest import make_llm
from .prompts import PROMPTS

GREEDY = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
REPETITIVE = ["a b c d e f g a b c d e f g a b c", "one two three four one two three four one two",
              "x = [1, 2, 3]\ny = [1, 2, 3]\nz = [1, 2,"]
TINY = dict(model__max_model_len=512, cache__num_pages=256, scheduler__max_num_batched_tokens=256,
            scheduler__prefill_buckets=[16, 64, 256])
# Verify on every step whatever the batch size and acceptance, so these tests exercise speculation.
ALWAYS = dict(speculative__max_batch_for_speculation=64, speculative__min_accepted_tokens=0.0)


@pytest.fixture(scope="module")
def tiny_reference():
    llm = make_llm("tiny-random", **TINY)
    return llm, [o.token_ids for o in llm.generate(REPETITIVE, GREEDY, use_tqdm=False)]


@pytest.mark.parametrize("method, k", [("ngram", 1), ("ngram", 4), ("ngram", 7), ("draft", 3)])
def test_greedy_unchanged_tiny(tiny_reference, method, k):
    _, want = tiny_reference
    llm = make_llm("tiny-random", speculative__method=method, speculative__num_speculative_tokens=k,
                   speculative__draft_source="tiny-random" if method == "draft" else None, **ALWAYS, **TINY)
    got = [o.token_ids for o in llm.generate(REPETITIVE, GREEDY, use_tqdm=False)]
    assert got == want
    assert llm.engine.stats().spec_proposed_tokens > 0


def test_opted_out_and_logprob_requests_decode_plainly(tiny_reference):
    """SamplingParams(use_speculation=False) and logprobs requests never propose; others still do."""
    want = [ids[:16] for ids in tiny_reference[1]]
    llm = make_llm("tiny-random", speculative__method="ngram", speculative__num_speculative_tokens=4,
                   **ALWAYS, **TINY)

    def run(**kw) -> tuple[list[list[int]], int]:
        params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, **kw)
        before = llm.engine.stats().spec_proposed_tokens
        ids = [o.token_ids for o in llm.generate(REPETITIVE, params, use_tqdm=False)]
        return ids, llm.engine.stats().spec_proposed_tokens - before

    assert run(use_speculation=False) == (want, 0)
    assert run(logprobs=1) == (want, 0)
    ids, proposed = run()
    assert ids == want and proposed > 0


def test_greedy_unchanged_with_preemption_and_page_boundaries(tiny_reference):
    _, want = tiny_reference
    llm = make_llm("tiny-random", speculative__method="ngram", speculative__num_speculative_tokens=5,
                   **ALWAYS, **{**TINY, "cache__num_pages": 8, "cache__enable_prefix_caching": False})
    got = [o.token_ids for o in llm.generate(REPETITIVE, GREEDY, use_tqdm=False)]
    stats = llm.engine.stats()
    assert stats.num_preemptions > 0 and stats.spec_accepted_tokens > 0
    assert got == want


def test_stop_inside_an_accepted_run(tiny_reference):
    ref_llm, want = tiny_reference
    llm = make_llm("tiny-random", speculative__method="ngram", speculative__num_speculative_tokens=6,
                   **ALWAYS, **TINY)
    seq = want[0]
    stop_id = seq[20]
    first = seq.index(stop_id)
    out = llm.generate([REPETITIVE[0]], GREEDY.replace(stop_token_ids=[stop_id]), use_tqdm=False)[0]
    assert out.token_ids == seq[:first + 1] and out.finish_reason is FinishReason.STOP
    out = llm.generate([REPETITIVE[0]], GREEDY.replace(max_tokens=13), use_tqdm=False)[0]
    assert out.token_ids == seq[:13] and out.finish_reason is FinishReason.LENGTH
    text = ref_llm.tokenizer.decode(seq)
    stop = text[len(text) // 2:len(text) // 2 + 2]
    out = llm.generate([REPETITIVE[0]], GREEDY.replace(stop=[stop]), use_tqdm=False)[0]
    assert out.text == text[:text.index(stop)]
    assert llm.engine.stats().spec_accepted_tokens > 0


@pytest.mark.slow
def test_greedy_unchanged_real_model(smollm):
    prompts = [PROMPTS[5] * 3, "Repeat after me: the rain in Spain stays mainly in the plain. "
               "The rain in Spain stays mainly in the plain. The rain in"]
    want = [o.token_ids for o in smollm.generate(prompts, GREEDY, use_tqdm=False)]
    spec = make_llm(speculative__method="ngram", speculative__num_speculative_tokens=4, **ALWAYS)
    got = [o.token_ids for o in spec.generate(prompts, GREEDY, use_tqdm=False)]
    assert got == want
    assert spec.engine.stats().spec_accepted_tokens > 0


# ------------------------------------------------------------------------- adaptive speculation
class _OracleProposer:
    """Proposes from the known greedy output: right(n) tokens correct, then wrong ones.

    n: the sequence's output length so far."""

    def __init__(self, reference: dict[tuple[int, ...], list[int]], vocab: int, right=lambda n: 0):
        self.reference, self.vocab, self.right = reference, vocab, right

    def lookahead(self, seq, k: int) -> int:
        return k

    def observe(self, batch) -> None:
        pass

    def propose(self, seqs, lengths: list[int]) -> list[list[int]]:
        drafts = []
        for s, k in zip(seqs, lengths):
            want, n = self.reference[tuple(s.prompt_ids)], len(s.output_ids)
            right = self.right(n)
            drafts.append([want[n + j] if j < right else (want[n + j] + 1) % self.vocab for j in range(k)])
        return drafts


def _oracle_engine(tiny_reference, right, **overrides) -> tuple[Engine, list[list[int]], list[list[int]]]:
    """A speculating engine whose proposer is an oracle over the reference's greedy output."""
    ref_llm, want = tiny_reference
    prompts = [ref_llm.tokenizer.encode(p) for p in REPETITIVE]
    llm = make_llm("tiny-random", speculative__method="ngram", speculative__num_speculative_tokens=4,
                   scheduler__max_prefill_seqs=len(REPETITIVE), **{**TINY, **overrides})
    engine = llm.engine
    engine.speculation.proposer = _OracleProposer({tuple(p): w for p, w in zip(prompts, want)},
                                      engine.arch.vocab_size, right)
    return engine, prompts, want


def _run_steps(engine: Engine, prompts: list[list[int]]) -> tuple[list[list[int]], list[bool]]:
    """Greedy outputs, and per decode step whether it ran a verify pass."""
    for i, ids in enumerate(prompts):
        engine.add_request(f"r{i}", ids, GREEDY)
    out: dict[str, list[int]] = {}
    verified = []
    while engine.has_unfinished_requests():
        before = engine.speculation.verify_steps
        decoding = any(s.is_decoding for s in engine.scheduler.running)
        for d in engine.step():
            out.setdefault(d.request_id, []).extend(d.token_ids)
        if decoding:
            verified.append(engine.speculation.verify_steps > before)
    return [out[f"r{i}"] for i in range(len(prompts))], verified


@pytest.mark.parametrize("limit", [2, 3])
def test_no_speculation_above_max_batch(tiny_reference, limit):
    """Three sequences decode in lockstep: a limit of 2 never verifies, a limit of 3 does."""
    _, want = tiny_reference
    llm = make_llm("tiny-random", speculative__method="ngram", speculative__num_speculative_tokens=4,
                   speculative__max_batch_for_speculation=limit, speculative__min_accepted_tokens=0.0,
                   scheduler__max_prefill_seqs=len(REPETITIVE), **TINY)
    got = [o.token_ids for o in llm.generate(REPETITIVE, GREEDY, use_tqdm=False)]
    assert got == want
    stats = llm.engine.stats()
    if limit < len(REPETITIVE):
        assert stats.spec_proposed_tokens == 0 and llm.engine.speculation.verify_steps == 0
    else:
        assert stats.spec_proposed_tokens > 0 and llm.engine.speculation.verify_steps > 0


def test_rejected_proposals_are_rarely_verified(tiny_reference):
    """Every proposal wrong (default gates): few decode steps pay for a verify pass."""
    engine, prompts, want = _oracle_engine(tiny_reference, right=lambda n: 0)
    got, verified = _run_steps(engine, prompts)
    assert got == want
    stats = engine.stats()
    assert stats.spec_proposed_tokens > 0 and stats.spec_accepted_tokens == 0
    assert 2 <= sum(verified) <= len(verified) // 4, verified


@pytest.mark.parametrize("min_accepted", [2.0, 1.0])
def test_low_acceptance_probes_every_eighth_step(tiny_reference, min_accepted):
    """One of four proposed tokens accepted per verify: below a break-even of 2 only probes run
    (the per-sequence back-off never starts, as every verify accepts a token); at 1, every step."""
    engine, prompts, want = _oracle_engine(tiny_reference, right=lambda n: 1,
                                           speculative__min_accepted_tokens=min_accepted)
    got, verified = _run_steps(engine, prompts)
    assert got == want
    stats = engine.stats()
    assert stats.spec_accepted_tokens == engine.speculation.verify_steps * len(prompts)
    if min_accepted > 1.0:
        assert 2 <= sum(verified) <= len(verified) // 8 + 1, verified
        assert verified[:9] == [True] + [False] * 7 + [True]
    else:
        assert all(verified[:-1]), verified   # all but a last step with no room left to propose


def test_speculation_resumes_when_acceptance_recovers(tiny_reference):
    """Wrong proposals for the first 12 output tokens, right ones afterwards: once a probe sees
    the acceptance, every step verifies again."""
    engine, prompts, want = _oracle_engine(tiny_reference, right=lambda n: 0 if n < 12 else 4)
    got, verified = _run_steps(engine, prompts)
    assert got == want
    verifies = [i for i, v in enumerate(verified) if v]
    assert verifies[:3] == [0, 8, 16], verified    # rejected at 0 and at the probe at 8
    assert all(verified[16:]), verified            # the probe at 16 accepted: every step again


@pytest.mark.parametrize("key, value", [("max_batch_for_speculation", 0), ("min_accepted_tokens", -0.5),
                                        ("min_accepted_tokens", 4.5)])
def test_adaptive_settings_are_validated(key, value):
    with pytest.raises(ValueError, match=f"speculative.{key}"):   # 4.5 > k = 4 drafts per step
        load_config(overrides={"speculative": {"method": "ngram", "num_speculative_tokens": 4, key: value}})
    config = load_config(overrides={"speculative": {"min_accepted_tokens": 1}})   # an int is fine
    assert config.speculative.min_accepted_tokens == 1.0


def test_warmup_compiles_only_reachable_verify_shapes(tiny_reference):
    _, want = tiny_reference
    llm = make_llm("tiny-random", speculative__method="ngram", speculative__num_speculative_tokens=3,
                   speculative__max_batch_for_speculation=2, model__max_model_len=128, cache__num_pages=64,
                   scheduler__max_num_seqs=4, scheduler__decode_buckets=[1, 2, 4],
                   scheduler__max_num_batched_tokens=64, scheduler__prefill_buckets=[16, 64])
    engine = llm.engine
    assert engine.verify_buckets == (2,)
    engine.warmup()
    verifiers = {k.split()[1] for k in engine.runner.compiles.keys if k.startswith("verifier")}
    assert verifiers == {f"R={2 * 4}"}     # two sequences x verify_q (1 + 3 -> 4), not 4 x 4
    compiled = engine.runner.compiles.count
    for batch in ([0], [0, 1], [0, 1, 2]):  # one and two sequences speculate, three do not
        got = [o.token_ids for o in llm.generate([REPETITIVE[i] for i in batch], GREEDY, use_tqdm=False)]
        assert got == [want[i] for i in batch]
    assert engine.speculation.verify_steps > 0
    assert engine.runner.compiles.count == compiled, engine.runner.compiles.keys[compiled:]


# ------------------------------------------------------------------- distribution (tiny vocabulary)
VOCAB = 6


def _small_vocab_engine(**spec) -> Engine:
    words = {f"w{i}": i for i in range(VOCAB)}
    backend = HFTokenizer(WordLevel(words, unk_token="w0"))
    backend.pre_tokenizer = WhitespaceSplit()
    tokenizer = Tokenizer(backend, bos_token_id=None, eos_token_id=None)
    arch = ModelArch(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                     num_kv_heads=1, head_dim=16, max_position=256)
    # Small weights keep the distribution spread over the vocabulary, so the test has power.
    params = jax.tree_util.tree_map(lambda x: x * 0.3, init_random_params(arch, jax.random.key(3)))
    config = load_config(overrides={
        "model": {"max_model_len": 64}, "cache": {"num_pages": 256, "page_size": 4},
        "scheduler": {"max_num_seqs": 64, "max_num_batched_tokens": 256,
                      "decode_buckets": [64], "prefill_buckets": [256]},
        "speculative": {"max_batch_for_speculation": 64, "min_accepted_tokens": 0.0, **spec}})
    engine = Engine(config, arch, params, tokenizer)
    if spec.get("method") == "draft":
        engine.speculation.proposer.runner.params = jax.tree_util.tree_map(   # a deliberately different draft
            lambda x: x * 2.0, engine.speculation.proposer.runner.params)
    return engine


def _sample_frequencies(engine: Engine, num: int, steps: int) -> np.ndarray:
    """Counts of (position, token) over num seeded samples of `steps` tokens."""
    counts = np.zeros((steps, VOCAB))
    prompt = [1, 2, 1, 2, 1]     # repeats, so n-gram proposals fire
    for start in range(0, num, 64):
        for i in range(start, min(num, start + 64)):
            engine.add_request(f"r{i}", prompt, SamplingParams(temperature=1.0, seed=i, max_tokens=steps,
                                                               ignore_eos=True))
        outputs: dict[str, list[int]] = {}
        while engine.has_unfinished_requests():
            for d in engine.step():
                outputs.setdefault(d.request_id, []).extend(d.token_ids)
        for toks in outputs.values():
            counts[np.arange(steps), toks] += 1
    return counts


NUM_SAMPLES, SAMPLED_STEPS = 1536, 4


@pytest.fixture(scope="module")
def plain_distribution() -> np.ndarray:
    """The target's own sampled distribution, computed once for both proposers (same seeds)."""
    return _sample_frequencies(_small_vocab_engine(), NUM_SAMPLES, SAMPLED_STEPS) / NUM_SAMPLES


@pytest.mark.parametrize("spec", [{"method": "ngram", "num_speculative_tokens": 3, "ngram_min": 1},
                                  {"method": "draft", "num_speculative_tokens": 3,
                                   "draft_source": "tiny-random"}], ids=["ngram", "bad-draft"])
def test_sampled_distribution_matches_target(plain_distribution, spec):
    num, steps = NUM_SAMPLES, SAMPLED_STEPS
    plain = plain_distribution
    engine = _small_vocab_engine(**spec)
    specd = _sample_frequencies(engine, num, steps) / num
    stats = engine.stats()
    assert stats.spec_proposed_tokens > 0
    assert stats.spec_accepted_tokens < stats.spec_proposed_tokens   # rejections really happened
    # Total variation per position between two empirical distributions of 1536 samples over 6
    # tokens: sampling noise alone stays below ~0.05; a biased verifier shows 0.1 or more.
    tv = 0.5 * np.abs(plain - specd).sum(axis=1)
    print(f"\ntotal variation per position: {np.round(tv, 3)}; acceptance "
          f"{stats.spec_accepted_tokens}/{stats.spec_proposed_tokens}")
    assert tv.max() < 0.06
