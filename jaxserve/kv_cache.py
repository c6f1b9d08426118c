"""KVPages: the device-resident K and V page pools, and the pure function that writes into them.

Pools are shaped [L, P, S, K, D]. Page 0 is reserved: padding tokens write there, so a padded
batch never needs a mask on the write path. The model reads a layer through a *flat* view
[L*P, S, K, D] with block-table entries offset by layer*P: a reshape is free, whereas slicing
one layer out of a scan carry would copy it every step.
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
    k: jax.Array  # [L, P, S, K, D]
    v: jax.Array  # [L, P, S, K, D]

    @property
    def num_pages(self) -> int:
        return self.k.shape[1]

    @property
    def page_size(self) -> int:
        return self.k.shape[2]

    @property
    def page_bytes(self) -> int:
        """Bytes of one page across all layers, K and V together."""
        L, _, S, K, D = self.k.shape
        return 2 * L * S * K * D * self.k.dtype.itemsize


def storage_dtype(dtype) -> jnp.dtype:
    """What a pool of `dtype` is held in: bfloat16 on a CPU as its uint16 bits (see
    pallas_kernels.common.bf16_view for why), everything else as itself."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(BF16_BITS) if dtype == jnp.bfloat16 and jax.default_backend() == "cpu" else dtype


def allocate_kv_pages(arch: ModelArch, num_pages: int, page_size: int, dtype, sharding=None) -> KVPages:
    """Zeroed pools for K/V values of `dtype`, held in storage_dtype(dtype)."""
    shape = (arch.num_layers, num_pages, page_size, arch.num_kv_heads, arch.head_dim)
    make = jax.jit(lambda: jnp.zeros(shape, storage_dtype(dtype)), out_shardings=sharding)
    return KVPages(k=make(), v=make())


def write_kv(pool: jax.Array, layer: jax.Array, slots: jax.Array, new: jax.Array) -> jax.Array:
    """Scatter new K or V rows of one layer into the pool.

    Args:
      pool: [L, P, S, K, D]
      layer: i32[] layer index
      slots: i32[T] page * S + offset within the layer; padding tokens point into page 0
      new: [T, K, D]
    Returns:
      the pool with the rows written (in place under donation).
    """
    L, P, S, K, D = pool.shape
    if pool.dtype == BF16_BITS:
        new = jax.lax.bitcast_convert_type(new.astype(jnp.bfloat16), BF16_BITS)
    flat = pool.reshape(L * P * S, K, D)
    flat = flat.at[layer * (P * S) + slots].set(new.astype(pool.dtype), mode="promise_in_bounds")
    return flat.reshape(L, P, S, K, D)


def layer_view(pool: jax.Array) -> jax.Array:
    """[L, P, S, K, D] -> [L*P, S, K, D]: the page pool the attention kernels index directly."""
    L, P, S, K, D = pool.shape
    return pool.reshape(L * P, S, K, D)
