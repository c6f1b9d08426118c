"""Gemma 3 (text): the Gemma decoder with per-head q/k norm, no soft caps, five sliding layers
(local RoPE base, rope_local_base_freq) per full one (global base, with the 4B+ models' linear
scaling). Hugging Face checkpoints and llama.cpp's GGUF (`general.architecture = gemma3`).

A GGUF file stores less than config.json: llama.cpp hard-codes the rest for gemma3, and so do we,
with its values: the pattern (every sixth layer full), the local RoPE base 10,000 (read from
`gemma3.rope.freq_base_swa` where a newer converter writes it) and the query scale (1/sqrt(head_dim),
except the 27B's 1/sqrt(hidden / heads)).
"""
from __future__ import annotations

from jaxserve.model.families.gemma2 import gemma_family, read_gemma_config
from jaxserve.model.families.gguf_config import GGUFMeta, llama_like_gguf_arch
from jaxserve.model.families.hf_config import HFConfig

NAME = "gemma3"
_PATTERN = 6            # llama.cpp's swa pattern for gemma3: layers 5, 11, ... are full
_LOCAL_ROPE_BASE = 10000.0
_LAYERS_27B = 62        # the one size whose query_pre_attn_scalar is hidden / heads (168)


def read_hf_config(cfg: dict, source: str = "config.json"):
    c = HFConfig(cfg, NAME, source)
    if c.get("attention_bias", False):
        raise c.unsupported("attention_bias")
    return read_gemma_config(c, qk_norm=True, default_pattern=_PATTERN)


def read_gguf_config(m: GGUFMeta):
    layers = int(m.arch_key("block_count", required=True))
    hidden = int(m.arch_key("embedding_length", required=True))
    heads = int(m.arch_key("attention.head_count", required=True))
    head_dim = int(m.arch_key("attention.key_length", hidden // heads))
    kinds = tuple("full" if (i + 1) % _PATTERN == 0 else "sliding" for i in range(layers))
    return llama_like_gguf_arch(
        m, NAME, head_dim=head_dim, rms_norm_eps=float(m.arch_key("attention.layer_norm_rms_epsilon", 1e-6)),
        qk_norm=True, layer_kinds=kinds,
        rope_local_theta=float(m.arch_key("rope.freq_base_swa", _LOCAL_ROPE_BASE)),
        query_pre_attn_scalar=float(hidden // heads if layers == _LAYERS_27B else head_dim))


FAMILY = gemma_family(NAME, "Gemma3ForCausalLM", read_hf_config, read_gguf_config)
