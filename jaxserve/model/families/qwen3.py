"""Qwen3 (dense): the Llama decoder with an RMSNorm over each head's q and k before RoPE, an
explicit head_dim (128 with hidden 1024 on Qwen3-0.6B: H*D need not equal E), no q/k/v bias."""
from __future__ import annotations

from jaxserve.model.families.gguf_config import GGUFMeta, llama_like_gguf_arch
from jaxserve.model.families.hf_config import HFConfig, llama_like_arch
from jaxserve.model.families.llama import llama_like

NAME = "qwen3"


def read_hf_config(cfg: dict, source: str = "config.json"):
    return llama_like_arch(HFConfig(cfg, NAME, source), qk_norm=True)


def read_gguf_config(meta: GGUFMeta):
    return llama_like_gguf_arch(meta, NAME, qk_norm=True)


FAMILY = llama_like(
    name=NAME,
    hf_architectures=("Qwen3ForCausalLM",),
    gguf_architectures=("qwen3",),
    read_hf_config=read_hf_config,
    read_gguf_config=read_gguf_config,
)
