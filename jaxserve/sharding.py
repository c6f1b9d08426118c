"""Meshes and tensor-parallel shardings for one side (prefill or decode) of the engine.

Tensor parallel over one mesh axis "tp": attention heads and the MLP's hidden units are split,
K/V pools are split over KV heads. A dimension that does not divide by the mesh size stays
replicated (SmolLM2 has 3 KV heads: a 2-way mesh replicates them, a 3-way one splits them);
XLA's partitioner inserts the collectives the chosen layout needs.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Flax module name -> which axis of its stacked kernel [L, in, out] is split.
_KERNEL_AXIS = {"wq": 2, "wk": 2, "wv": 2, "w_gate": 2, "w_up": 2, "wo": 1, "w_down": 1}
_BIAS_AXIS = {"wq": 1, "wk": 1, "wv": 1}


def make_mesh(device_ids: tuple[int, ...] | list[int]) -> Mesh:
    devices = jax.devices()
    missing = [i for i in device_ids if i >= len(devices)]
    if missing:
        raise ValueError(f"disagg devices {missing} do not exist: this process sees {len(devices)} "
                         f"(on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N)")
    return Mesh(np.array([devices[i] for i in device_ids]), ("tp",))


def _spec(shape: tuple[int, ...], axis: int | None, size: int) -> P:
    if axis is None or shape[axis] % size:
        return P()
    parts = [None] * len(shape)
    parts[axis] = "tp"
    return P(*parts)


def shard_params(params: dict, mesh: Mesh) -> dict:
    size = mesh.size

    def place(path, leaf):
        keys = [getattr(k, "key", None) for k in path]
        axis = None
        if "layers" in keys and len(keys) >= 3:
            module, name = keys[-2], keys[-1]
            axis = (_KERNEL_AXIS if name == "kernel" else _BIAS_AXIS if name == "bias" else {}).get(module)
        return jax.device_put(leaf, NamedSharding(mesh, _spec(leaf.shape, axis, size)))

    return jax.tree_util.tree_map_with_path(place, params)


def kv_sharding(mesh: Mesh, num_kv_heads: int) -> NamedSharding:
    """Pools [L, P, S, K, D] split over K when it divides, else replicated."""
    return NamedSharding(mesh, _spec((1, 1, 1, num_kv_heads, 1), 3, mesh.size))
