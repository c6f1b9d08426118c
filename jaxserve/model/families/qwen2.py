"""Qwen2 / Qwen2.5: the Llama decoder with q/k/v biases (always present; config.json does not
say so) and rotate-half RoPE, which llama.cpp does not permute."""
from __future__ import annotations

import dataclasses

from jaxserve.model.families.gguf_config import GGUFMeta, llama_like_gguf_arch
from jaxserve.model.families.hf_config import HFConfig, llama_like_arch
from jaxserve.model.families.llama import llama_like

NAME = "qwen2"


def read_hf_config(cfg: dict, source: str = "config.json"):
    return llama_like_arch(HFConfig(cfg, NAME, source), qkv_bias=True)


def read_gguf_config(meta: GGUFMeta):
    return dataclasses.replace(llama_like_gguf_arch(meta, NAME), qkv_bias=True)


FAMILY = llama_like(
    name=NAME,
    hf_architectures=("Qwen2ForCausalLM",),
    gguf_architectures=("qwen2",),
    read_hf_config=read_hf_config,
    read_gguf_config=read_gguf_config,
)
