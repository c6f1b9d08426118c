"""Gemma 3 (text): the Gemma decoder with per-head q/k norm, no soft caps, five sliding layers
(local RoPE base, rope_local_base_freq) per full one (global base, with the 4B+ models' linear
scaling). Hugging Face checkpoints only for now (see gemma2.py on GGUF)."""
from __future__ import annotations

from jaxserve.model import gemma
from jaxserve.model.families.gemma2 import convert_layer, read_gemma_config
from jaxserve.model.families.hf_config import HFConfig
from jaxserve.model.families.llama import TP_COLUMN, TP_ROW
from jaxserve.model.registry import ModelFamily

NAME = "gemma3"


def read_hf_config(cfg: dict, source: str = "config.json"):
    c = HFConfig(cfg, NAME, source)
    if c.get("attention_bias", False):
        raise c.unsupported("attention_bias")
    return read_gemma_config(c, qk_norm=True, default_pattern=6)


FAMILY = ModelFamily(
    name=NAME,
    hf_architectures=("Gemma3ForCausalLM",),
    gguf_architectures=(),
    read_hf_config=read_hf_config,
    read_gguf_config=None,
    convert_layer=convert_layer,
    gguf_tensor_names={},
    gguf_permutes_qk=False,
    forward=gemma.forward,
    layer_param_shapes=gemma.layer_param_shapes,
    init_random_params=gemma.init_random_params,
    tp_column=TP_COLUMN,
    tp_row=TP_ROW,
    arrange_layers=gemma.arrange_layers,
    hf_norm_offset=1.0,
)
