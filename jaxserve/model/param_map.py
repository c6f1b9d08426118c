"""Checkpoint tensors -> one layer's Flax params, with every presence and shape checked at load.

Families describe their layers in Hugging Face names ([out, in] matrices); `LayerTensors` hands
them out by suffix, checked against the shapes the family's own module declares, so a missing or
mis-shaped tensor fails at load with its full name instead of giving a wrong answer. A tensor the
checkpoint has and no family rule read is an error too (an unknown bias silently dropped would
change every logit).
"""
from __future__ import annotations

from typing import Callable

import numpy as np


class CheckpointError(ValueError):
    """A tensor is missing, mis-shaped or not understood."""


# HF suffix within a layer -> (Flax module, Flax param): the Llama layout that most families share.
LLAMA_LAYER = {
    "input_layernorm.weight": ("attn_norm", "scale"),
    "self_attn.q_proj.weight": ("wq", "kernel"),
    "self_attn.k_proj.weight": ("wk", "kernel"),
    "self_attn.v_proj.weight": ("wv", "kernel"),
    "self_attn.q_proj.bias": ("wq", "bias"),
    "self_attn.k_proj.bias": ("wk", "bias"),
    "self_attn.v_proj.bias": ("wv", "bias"),
    "self_attn.q_norm.weight": ("q_norm", "scale"),
    "self_attn.k_norm.weight": ("k_norm", "scale"),
    "self_attn.o_proj.weight": ("wo", "kernel"),
    "post_attention_layernorm.weight": ("mlp_norm", "scale"),
    "mlp.gate_proj.weight": ("w_gate", "kernel"),
    "mlp.up_proj.weight": ("w_up", "kernel"),
    "mlp.down_proj.weight": ("w_down", "kernel"),
}

# Buffers some checkpoints carry that hold nothing the model needs.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointTensors:
    """Tensors by Hugging Face name, remembering which were read."""

    def __init__(self, get: Callable[[str], np.ndarray | None], names, source: str):
        self._get = get
        self.names = frozenset(names)
        self.source = source
        self.read: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.names

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.names:
            raise CheckpointError(f"{self.source}: checkpoint lacks tensor {name} (expected shape {shape})")
        t = self._get(name)
        if tuple(t.shape) != tuple(shape):
            raise CheckpointError(f"{self.source}: tensor {name} has shape {tuple(t.shape)}; "
                                  f"the config implies {tuple(shape)}")
        self.read.add(name)
        return t

    def check_all_read(self) -> None:
        left = sorted(n for n in self.names - self.read if not n.endswith(_IGNORED_SUFFIXES))
        if left:
            more = f" and {len(left) - 5} more" if len(left) > 5 else ""
            raise CheckpointError(f"{self.source}: checkpoint tensors not used by this model family "
                                  f"(a config field may be missing): {', '.join(left[:5])}{more}")


class LayerTensors:
    """One layer's view: tensors by suffix, shapes checked against the family's module."""

    def __init__(self, tensors: CheckpointTensors, layer: int, shapes: dict):
        self.tensors = tensors
        self.prefix = f"model.layers.{layer}."
        self.shapes = shapes              # {module: {param: ShapeDtypeStruct}} of one layer

    def has(self, suffix: str) -> bool:
        return self.tensors.has(self.prefix + suffix)

    def take(self, suffix: str, shape: tuple[int, ...]) -> np.ndarray:
        return self.tensors.take(self.prefix + suffix, shape)

    def expected(self, module: str, param: str) -> tuple[int, ...] | None:
        """The checkpoint-side shape of a param ([out, in] for kernels), None if the module lacks it."""
        leaf = self.shapes.get(module, {}).get(param)
        if leaf is None:
            return None
        return tuple(reversed(leaf.shape)) if param == "kernel" else tuple(leaf.shape)


def convert_table(t: LayerTensors, table: dict[str, tuple[str, str]]) -> dict:
    """Read every table entry the module has a param for; kernels transposed to [in, out]."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for suffix, (module, param) in table.items():
        shape = t.expected(module, param)
        if shape is None:
            continue
        w = t.take(suffix, shape)
        out.setdefault(module, {})[param] = w.T if param == "kernel" else w
    return out


def convert_llama_layer(t: LayerTensors, arch) -> dict:
    """The Llama layout (LLAMA_LAYER); the module's params decide which optional tensors are read."""
    return convert_table(t, LLAMA_LAYER)

# HF suffix within a layer -> llama.cpp's (`blk.{i}.` + this) for the Llama layout.
LLAMA_GGUF = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
