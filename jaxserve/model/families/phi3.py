"""Phi-3 / Phi-3.5 (mini, medium): the Llama decoder, but the checkpoint fuses q, k and v into one
`qkv_proj` and gate and up into one `gate_up_proj`. They are split at load, so the decoder and
the tensor-parallel rules stay the Llama ones (a fused kernel would shard across q/k/v bounds).
The 128k variants' `longrope` scaling and partial rotary embeddings are rejected at load."""
from __future__ import annotations

import numpy as np

from jaxserve.model.families.gguf_config import GGUFMeta, llama_like_gguf_arch
from jaxserve.model.families.hf_config import HFConfig, llama_like_arch
from jaxserve.model.families.llama import llama_like
from jaxserve.model.param_map import LLAMA_GGUF, LLAMA_LAYER, LayerTensors, convert_table

NAME = "phi3"

_UNFUSED = {k: v for k, v in LLAMA_LAYER.items()
            if v[0] not in ("wq", "wk", "wv", "w_gate", "w_up")}


def read_hf_config(cfg: dict, source: str = "config.json"):
    c = HFConfig(cfg, NAME, source)
    partial = (c.get("rope_parameters") or {}).get("partial_rotary_factor",
                                                   c.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise c.unsupported(f"partial_rotary_factor {partial}")
    return llama_like_arch(c)


def read_gguf_config(meta: GGUFMeta):
    return llama_like_gguf_arch(meta, NAME)


def convert_layer(t: LayerTensors, arch) -> dict:
    """Rows of qkv_proj are [q (H*D), k (K*D), v (K*D)]; of gate_up_proj [gate (F), up (F)]."""
    out = convert_table(t, _UNFUSED)
    E, F = arch.hidden_size, arch.intermediate_size
    q_rows, kv_rows = arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
    qkv = t.take("self_attn.qkv_proj.weight", (q_rows + 2 * kv_rows, E))
    q, k, v = np.split(qkv, [q_rows, q_rows + kv_rows])
    gate, up = np.split(t.take("mlp.gate_up_proj.weight", (2 * F, E)), 2)
    for module, w in (("wq", q), ("wk", k), ("wv", v), ("w_gate", gate), ("w_up", up)):
        out[module] = {"kernel": w.T}
    return out


FAMILY = llama_like(
    name=NAME,
    hf_architectures=("Phi3ForCausalLM",),
    gguf_architectures=("phi3",),
    read_hf_config=read_hf_config,
    read_gguf_config=read_gguf_config,
    convert_layer=convert_layer,
    # llama.cpp keeps the fusions: attn_qkv, and ffn_up holding gate and up.
    gguf_tensor_names={**{k: v for k, v in LLAMA_GGUF.items() if k in _UNFUSED},
                       "self_attn.qkv_proj.weight": "attn_qkv.weight",
                       "mlp.gate_up_proj.weight": "ffn_up.weight"},
)
