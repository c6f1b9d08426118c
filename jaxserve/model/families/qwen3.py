"""Qwen3 (dense): the Llama decoder with an RMSNorm over each head's q and k before RoPE, an
explicit head_dim (128 with hidden 1024 on Qwen3-0.6B: H*D need not equal E), no q/k/v bias."""
from __future__ import annotations

from jaxserve.model import llama
from jaxserve.model.families.gguf_config import GGUFMeta, llama_like_gguf_arch
from jaxserve.model.families.hf_config import HFConfig, llama_like_arch
from jaxserve.model.families.llama import TP_COLUMN, TP_ROW
from jaxserve.model.param_map import LLAMA_GGUF, convert_llama_layer
from jaxserve.model.registry import ModelFamily

NAME = "qwen3"


def read_hf_config(cfg: dict, source: str = "config.json"):
    return llama_like_arch(HFConfig(cfg, NAME, source), qk_norm=True)


def read_gguf_config(meta: GGUFMeta):
    return llama_like_gguf_arch(meta, NAME, qk_norm=True)


FAMILY = ModelFamily(
    name=NAME,
    hf_architectures=("Qwen3ForCausalLM",),
    gguf_architectures=("qwen3",),
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
