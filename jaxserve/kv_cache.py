"""KVPages: the device-resident K and V page pools, and the pure function that writes into them.

Pools are shaped [L, P, S, K*D]: each token's K (or V) heads side by side in one row. Page 0 is
reserved: padding tokens write there, so a padded batch never needs a mask on the write path.
The model reads a layer through a *flat* view [L*P, S, K, D] with block-table entries offset by
layer*P: a reshape is free, whereas slicing one layer out of a scan carry would copy it every step.

Why K*D and not separate K and D axes: with one KV head (Gemma 3 270M, any MQA model) a K axis
has size 1, and XLA:CPU's layout assignment then gives the layer loop's carry a layout that
differs from the default only in where that axis sits, converting back with a full copy of both
pools at every layer. A decode step then cost time in proportion to the pool: 0.52 s at 256
pages, 2.7 s at 2,048 on a Gemma 3 270M shape, against 0.09 s for both without the size-1 axis
(tests/model/test_pool_copies.py reads the compiled step for such copies).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from jaxserve.model.arch import ModelArch
from pallas_kernels.common import BF16_BITS


@functools.partial(jax.tree_util.register_dataclass, data_fields=["k", "v"], meta_fields=[])
@dataclass
class KVPages:
    k: jax.Array  # [L, P, S, K*D]
    v: jax.Array  # [L, P, S, K*D]

    @property
    def num_pages(self) -> int:
        return self.k.shape[1]

    @property
    def page_size(self) -> int:
        return self.k.shape[2]

    @property
    def page_bytes(self) -> int:
        """Bytes of one page across all layers, K and V together."""
        L, _, S, KD = self.k.shape
        return 2 * L * S * KD * self.k.dtype.itemsize


def storage_dtype(dtype) -> jnp.dtype:
    """What a pool of `dtype` is held in: bfloat16 on a CPU as its uint16 bits (see
    pallas_kernels.common.bf16_view for why), everything else as itself."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(BF16_BITS) if dtype == jnp.bfloat16 and jax.default_backend() == "cpu" else dtype


def allocate_kv_pages(arch: ModelArch, num_pages: int, page_size: int, dtype, sharding=None) -> KVPages:
    """Zeroed pools for K/V values of `dtype`, held in storage_dtype(dtype)."""
    shape = (arch.num_layers, num_pages, page_size, arch.num_kv_heads * arch.head_dim)
    make = jax.jit(lambda: jnp.zeros(shape, storage_dtype(dtype)), out_shardings=sharding)
    return KVPages(k=make(), v=make())


def write_kv(pool: jax.Array, layer: jax.Array, slots: jax.Array, new: jax.Array) -> jax.Array:
    """Scatter new K or V rows of one layer into the pool.

    Args:
      pool: [L, P, S, K*D]
      layer: i32[] layer index
      slots: i32[T] page * S + offset within the layer; padding tokens point into page 0
      new: [T, K, D]
    Returns:
      the pool with the rows written (in place under donation).
    """
    L, P, S, KD = pool.shape
    if pool.dtype == BF16_BITS:
        new = jax.lax.bitcast_convert_type(new.astype(jnp.bfloat16), BF16_BITS)
    flat = pool.reshape(L * P * S, KD)
    rows = new.reshape(new.shape[0], KD).astype(pool.dtype)
    flat = flat.at[layer * (P * S) + slots].set(rows, mode="promise_in_bounds")
    return flat.reshape(L, P, S, KD)


def layer_view(pool: jax.Array, num_kv_heads: int) -> jax.Array:
    """[L, P, S, K*D] -> [L*P, S, K, D]: the page pool the attention kernels index directly."""
    L, P, S, KD = pool.shape
    return pool.reshape(L * P, S, num_kv_heads, KD // num_kv_heads)
