"""Verification of proposed tokens on device: exact for greedy, modified rejection sampling otherwise.

Row j of a sequence holds the target's logits after its j-th input token and is judged against
the draft token d_{j+1} that follows it (-1 where none). For each row the device returns:
  plain    the token the non-speculative sampler would draw there (same key: fold_in(seed, step)),
  accept   whether d_{j+1} stands,
  residual the replacement if it does not.
Proposers here give one token, not a distribution (q = a point mass), so d is accepted with
probability p(d) and a rejection draws from p with d removed, renormalised: the emitted token
has exactly the target's distribution p. Greedy rows accept iff d == argmax and replace with
the argmax, which is what plain decoding emits.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from jaxserve.sampler import MASKED, SamplingArrays, process_logits
from jaxserve.sampler.draw import categorical, row_keys


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["plain", "accept", "residual"], meta_fields=[])
@dataclass
class VerifyResult:
    plain: jax.Array     # i32[R]
    accept: jax.Array    # bool[R]
    residual: jax.Array  # i32[R]


def verify(logits: jax.Array, s: SamplingArrays, draft: jax.Array) -> VerifyResult:
    """logits: f32[R, V]; s: per-row params with steps = output index of the row; draft: i32[R].

    The rows go through the sampler's stages up to the draw (the filters keep each row's
    maximum, so greedy rows' argmax is unchanged); the draws here replace the sampler's draw.
    """
    R, V = logits.shape
    scaled = process_logits(logits.astype(jnp.float32), s)
    greedy_tok = jnp.argmax(scaled, axis=-1).astype(jnp.int32)
    has_draft = draft >= 0
    d = jnp.where(has_draft, draft, 0)
    draws = s.stages["draw"]
    if draws is None:   # every row greedy
        accept = has_draft & (d == greedy_tok)
        return VerifyResult(greedy_tok, accept, greedy_tok)
    greedy = ~draws.sampled
    k_plain = row_keys(draws.seeds, draws.steps)
    k_accept = jax.vmap(lambda k: jax.random.fold_in(k, 1))(k_plain)
    k_resid = jax.vmap(lambda k: jax.random.fold_in(k, 2))(k_plain)
    plain = categorical(k_plain, scaled)
    p_draft = jnp.take_along_axis(jax.nn.softmax(scaled, axis=-1), d[:, None], axis=-1)[:, 0]
    u = jax.vmap(lambda k: jax.random.uniform(k))(k_accept)
    without_d = jnp.where(jnp.arange(V)[None, :] == d[:, None], MASKED, scaled)
    residual = categorical(k_resid, without_d)
    accept = has_draft & jnp.where(greedy, d == greedy_tok, u < p_draft)
    return VerifyResult(jnp.where(greedy, greedy_tok, plain), accept,
                        jnp.where(greedy, greedy_tok, residual))


def accepted_tokens(draft: list[int], accept, residual, plain) -> list[int]:
    """Host side: the tokens one sequence emits from its rows (len(draft) + 1 rows)."""
    out = []
    for j, tok in enumerate(draft):
        if accept[j]:
            out.append(tok)
        else:
            out.append(int(residual[j]))
            return out
    out.append(int(plain[len(draft)]))
    return out
