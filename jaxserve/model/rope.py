"""Rotary position embeddings: the frequencies each rope_type gives, and the rotation itself.

Frequencies are computed on the host with numpy (they depend only on the static ModelArch) and
enter the jitted step as constants. The formulas follow Hugging Face's
`modeling_rope_utils` (`default`, `linear`, `llama3`, `yarn`), which is what the checkpoints were
trained with; rotation is the rotate-half layout (GGUF q/k rows are un-permuted to it at load).
`dynamic` (NTK) is refused at config reading: its frequencies follow the longest sequence of
each forward pass, which a paged cache of per-sequence keys cannot reproduce.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.model.arch import RopeScaling


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> np.ndarray:
    """f32[D/2] inverse frequencies of the rotated pairs."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if scaling is None or scaling.rope_type == "default":
        return inv_freq.astype(np.float32)
    if scaling.rope_type == "linear":           # positions divided by factor
        return (inv_freq / scaling.factor).astype(np.float32)
    if scaling.rope_type == "yarn":
        return _yarn(inv_freq, theta, head_dim, scaling).astype(np.float32)
    return _llama3(inv_freq, scaling).astype(np.float32)


def rope_attention_factor(scaling: RopeScaling | None) -> float:
    """The factor on cos and sin: 1, but for yarn's attention_factor (sharper long-context logits)."""
    return 1.0 if scaling is None else scaling.attention_factor


def _llama3(inv_freq: np.ndarray, s: RopeScaling) -> np.ndarray:
    """Llama 3.1: long wavelengths divided by factor, short ones kept, a smooth blend between."""
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = s.original_max_position / s.low_freq_factor
    high_freq_wavelen = s.original_max_position / s.high_freq_factor
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(medium, blended, scaled)


def _yarn(inv_freq: np.ndarray, theta: float, head_dim: int, s: RopeScaling) -> np.ndarray:
    """YaRN: frequencies that turn fewer than beta_slow times over the original context are
    divided by factor, those turning more than beta_fast times are kept, a linear ramp between."""
    def band_edge(rotations: float) -> float:     # the pair index that turns `rotations` times
        turns = s.original_max_position / (rotations * 2 * math.pi)
        return head_dim * math.log(turns) / (2 * math.log(theta))

    low, high = band_edge(s.beta_fast), band_edge(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001                             # as transformers does, to avoid 0 / 0
    ramp = np.clip((np.arange(head_dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    kept = 1 - ramp                               # 1: extrapolated (kept), 0: interpolated
    return (inv_freq / s.factor) * (1 - kept) + inv_freq * kept


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray,
               attention_factor: float = 1.0) -> jax.Array:
    """Rotate-half RoPE. x: [T, N, D]; positions: i32[T]; inv_freq: f32[D/2]; cos and sin are
    multiplied by attention_factor (see rope_attention_factor)."""
    d = x.shape[-1]
    angles = positions.astype(jnp.float32)[:, None] * jnp.asarray(inv_freq)[None, :]   # f32[T, D/2]
    cos = jnp.cos(angles)[:, None, :] * attention_factor
    sin = jnp.sin(angles)[:, None, :] * attention_factor
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., : d // 2], x32[..., d // 2:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)
