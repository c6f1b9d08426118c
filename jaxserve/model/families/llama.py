"""Llama 2 / 3 / 3.1 / 3.2 and Mistral: the Llama decoder (model/llama.py) as Hugging Face and
llama.cpp write it. RoPE scaling `linear` and `llama3`; Mistral's sliding window when its config
sets one. Also the family of the tiny random test model and of SmolLM2."""
from __future__ import annotations

from jaxserve.model import llama
from jaxserve.model.families.gguf_config import GGUFMeta, llama_like_gguf_arch
from jaxserve.model.families.hf_config import HFConfig, llama_like_arch
from jaxserve.model.param_map import LLAMA_GGUF, convert_llama_layer
from jaxserve.model.registry import ModelFamily

NAME = "llama"


def read_hf_config(cfg: dict, source: str = "config.json"):
    c = HFConfig(cfg, NAME, source)
    if c.get("mlp_bias", False):
        raise c.unsupported("mlp_bias")
    return llama_like_arch(c)


def read_gguf_config(meta: GGUFMeta):
    return llama_like_gguf_arch(meta, NAME)


# Column-parallel (output split) and row-parallel (input split) projections, for sharding.py.
TP_COLUMN = ("wq", "wk", "wv", "w_gate", "w_up")
TP_ROW = ("wo", "w_down")

def llama_like(**fields) -> ModelFamily:
    """A family on the Llama decoder: Llama's tensors, forward and sharding unless fields say otherwise."""
    defaults = dict(convert_layer=convert_llama_layer, gguf_tensor_names=LLAMA_GGUF, gguf_permutes_qk=False,
                    forward=llama.forward, layer_param_shapes=llama.layer_param_shapes,
                    init_random_params=llama.init_random_params, tp_column=TP_COLUMN, tp_row=TP_ROW)
    return ModelFamily(**(defaults | fields))


FAMILY = llama_like(
    name=NAME,
    hf_architectures=("LlamaForCausalLM", "MistralForCausalLM"),
    gguf_architectures=("llama", "mistral"),
    read_hf_config=read_hf_config,
    read_gguf_config=read_gguf_config,
    gguf_permutes_qk=True,          # llama.cpp's convert interleaves q/k rows for its RoPE
)
