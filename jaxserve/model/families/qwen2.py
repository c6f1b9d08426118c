"""Qwen2 / Qwen2.5: the Llama decoder with q/k/v biases (always present; config.json does not
say so) and rotate-half RoPE, which llama.cpp does not permute."""
from __future__ import annotations

import dataclasses

from jaxserve.model import llama
from jaxserve.model.families.gguf_config import GGUFMeta, llama_like_gguf_arch
from jaxserve.model.families.hf_config import HFConfig, llama_like_arch
from jaxserve.model.families.llama import TP_COLUMN, TP_ROW
from jaxserve.model.param_map import LLAMA_GGUF, convert_llama_layer
from jaxserve.model.registry import ModelFamily

NAME = "qwen2"


def read_hf_config(cfg: dict, source: str = "config.json"):
    return llama_like_arch(HFConfig(cfg, NAME, source), qkv_bias=True)


def read_gguf_config(meta: GGUFMeta):
    return dataclasses.replace(llama_like_gguf_arch(meta, NAME), qkv_bias=True)


FAMILY = ModelFamily(
    name=NAME,
    hf_architectures=("Qwen2ForCausalLM",),
    gguf_architectures=("qwen2",),
    read_hf_config=read_hf_config,
    read_gguf_config=read_gguf_config,
    convert_layer=convert_llama_layer,
    gguf_tensor_names=LLAMA_GGUF,
    gguf_permutes_qk=False,
    forward=llama.forward,
    layer_param_shapes=llama.layer_param_shapes,
    init_random_params=llama.init_random_params,
    tp_column=TP_COLUMN,
    tp_row=TP_ROW,
)
