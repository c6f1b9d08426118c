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


def shard_params(params: dict, mesh: Mesh, family) -> dict:
    """Place params on mesh: the family's column-parallel projections (registry tp_column) split
    their kernels [L, in, out] on out and biases [L, out] too; row-parallel ones (tp_row) split
    kernels on in; everything else is replicated."""
    size = mesh.size
    kernel_axis = {**{m: 2 for m in family.tp_column}, **{m: 1 for m in family.tp_row}}
    bias_axis = {m: 1 for m in family.tp_column}

    def place(path, leaf):
        keys = [getattr(k, "key", None) for k in path]
        axis = None
        if "layers" in keys and len(keys) >= 3:
            module, name = keys[-2], keys[-1]
            axis = (kernel_axis if name == "kernel" else bias_axis if name == "bias" else {}).get(module)
        return jax.device_put(leaf, NamedSharding(mesh, _spec(leaf.shape, axis, size)))

    return jax.tree_util.tree_map_with_path(place, params)


def kv_sharding(mesh: Mesh, num_kv_heads: int) -> NamedSharding:
    """Pools [L, P, S, K*D] split over K (whole heads to a device) when it divides, else replicated."""
    return NamedSharding(mesh, _spec((1, 1, 1, num_kv_heads), 3, mesh.size))
