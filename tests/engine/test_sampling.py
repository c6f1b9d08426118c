"""The on-device sampler, on synthetic logits (no model)."""
from __future__ import annotations

import numpy as np

from jaxserve import SamplingParams
from jaxserve.sampler import build_sampling, sample
from jaxserve.sequence import Sequence
from jaxserve.outputs import RequestMetrics
from jaxserve.step_inputs import Shapes

SHAPES = Shapes(page_size=16, max_pages_per_seq=8, decode_buckets=(1, 2, 4, 8), prefill_buckets=(16,),
                max_prefill_seqs=4, history_len=64)


def _seq(params: SamplingParams, seed=0, prompt=(1, 2, 3), output=()) -> Sequence:
    s = Sequence(seq_id=0, request_id="r", index=0, prompt_ids=list(prompt), params=params, seed=seed,
                 metrics=RequestMetrics(arrival_s=0.0))
    s.output_ids = list(output)
    return s


def _draws(logits: np.ndarray, params: SamplingParams, n: int, **seq_kw) -> np.ndarray:
    """Tokens drawn at n different output positions (distinct keys) for one row of logits."""
    out = []
    for step in range(n):
        seq = _seq(params, output=[0] * step, **seq_kw)
        arrays = build_sampling([seq], 1, SHAPES)
        out.append(int(sample(logits[None, :], arrays).tokens[0]))
    return np.array(out)


def test_greedy_is_argmax_and_top_k_1_matches_greedy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 50)).astype(np.float32)
    seqs = [_seq(SamplingParams(temperature=0)), _seq(SamplingParams(temperature=1.5, top_k=1, seed=1)),
            _seq(SamplingParams(temperature=0.7, top_p=1e-6, seed=2)), _seq(SamplingParams(temperature=0))]
    res = sample(logits, build_sampling(seqs, 4, SHAPES))
    assert list(res.tokens) == list(logits.argmax(-1))


def test_temperature_sampling_follows_softmax():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    tokens = _draws(logits, SamplingParams(temperature=1.0, seed=11), 1500)
    freq = np.bincount(tokens, minlength=4) / len(tokens)
    assert np.abs(freq - [0.5, 0.3, 0.15, 0.05]).sum() / 2 < 0.05   # total variation


def test_top_k_and_top_p_and_min_p_restrict_support():
    logits = np.log(np.array([0.4, 0.3, 0.2, 0.1], np.float32))
    assert set(_draws(logits, SamplingParams(temperature=1.0, top_k=2, seed=1), 300)) == {0, 1}
    assert set(_draws(logits, SamplingParams(temperature=1.0, top_p=0.65, seed=1), 300)) == {0, 1}
    assert set(_draws(logits, SamplingParams(temperature=1.0, min_p=0.6, seed=1), 300)) == {0, 1}


def test_penalties_change_only_seen_tokens():
    logits = np.array([2.0, 1.9, -1.0, 0.5], np.float32)
    p = SamplingParams(temperature=0, repetition_penalty=2.0)
    assert _draws(logits, p, 1, prompt=(0,))[0] == 1            # 2.0/2 = 1.0 < 1.9
    p = SamplingParams(temperature=0, presence_penalty=0.5)
    assert _draws(logits, p, 1, prompt=(0,))[0] == 0            # prompt tokens don't count
    seq = _seq(SamplingParams(temperature=0, frequency_penalty=0.1), prompt=(3,), output=[0, 0])
    assert int(sample(logits[None], build_sampling([seq], 1, SHAPES)).tokens[0]) == 1


def test_same_seed_same_draw_whatever_the_batch():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(8, 100)).astype(np.float32)
    target = _seq(SamplingParams(temperature=1.0, seed=42), output=[5, 6])
    alone = sample(logits[:1], build_sampling([target], 1, SHAPES)).tokens[0]
    others = [_seq(SamplingParams(temperature=1.0, seed=i)) for i in range(7)]
    batch = np.concatenate([logits[:1], logits[1:]])
    mixed = sample(batch, build_sampling([target] + others, 8, SHAPES)).tokens[0]
    assert alone == mixed


def test_logprobs_are_normalised_and_sorted():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(1, 30)).astype(np.float32)
    res = sample(logits, build_sampling([_seq(SamplingParams(temperature=0, logprobs=3))], 1, SHAPES))
    ref = logits[0] - np.log(np.exp(logits[0]).sum())
    np.testing.assert_allclose(res.logprobs[0], ref.max(), rtol=1e-5)
    np.testing.assert_allclose(res.top_logprobs[0][:3], np.sort(ref)[::-1][:3], rtol=1e-5)
    assert res.top_ids[0][0] == ref.argmax()


def test_blocked_inverse_cdf_draws_follow_softmax_across_blocks():
    """categorical over 1,000 tokens (four blocks of 256, the last padded): the frequencies of
    tokens placed in different blocks follow softmax, and masked tokens are never drawn."""
    import jax
    import jax.numpy as jnp
    from jaxserve.sampler import MASKED
    from jaxserve.sampler.draw import categorical, row_keys

    V, n = 1000, 20000
    probs = {3: 0.3, 255: 0.1, 256: 0.25, 600: 0.05, 999: 0.2, 998: 0.1}   # block edges on purpose
    row = np.full(V, MASKED, np.float32)
    for token, p in probs.items():
        row[token] = np.log(p)
    keys = row_keys(jnp.full(n, 7, jnp.uint32), jnp.arange(n, dtype=jnp.int32))
    tokens = np.asarray(jax.jit(categorical)(keys, jnp.broadcast_to(row, (n, V))))
    assert set(tokens) <= set(probs)
    freq = np.bincount(tokens, minlength=V)[list(probs)] / n
    assert np.abs(freq - list(probs.values())).max() < 0.015
