"""Gemma 2: the Gemma decoder (model/gemma.py) with attention and final-logit soft caps and
sliding and full layers alternating. Also the config reading Gemma 3 shares.

GGUF (`general.architecture = gemma2`): llama.cpp's converter folds the (1 + w) of every norm
into w, so those files load with no norm offset; the sandwich norms get their own names
(GEMMA_GGUF). The file carries the soft caps and the window; llama.cpp hard-codes the rest for
gemma2, and so do we, with its values: even layers sliding, odd ones full, one RoPE base for both,
and the query scale 1/sqrt(head_dim), except the 27B's 1/sqrt(hidden / heads). Keys it leaves out
take llama.cpp's defaults (window 4096, caps 50 and 30).
"""
from __future__ import annotations

from jaxserve.model import gemma
from jaxserve.model.arch import ModelArch
from jaxserve.model.families.gguf_config import GGUFMeta, llama_like_gguf_arch
from jaxserve.model.families.hf_config import HFConfig, MissingConfigField, rope_settings
from jaxserve.model.families.llama import TP_COLUMN, TP_ROW
from jaxserve.model.param_map import LLAMA_GGUF, LLAMA_LAYER, LayerTensors, convert_table
from jaxserve.model.registry import ModelFamily

NAME = "gemma2"

GEMMA_LAYER = {
    **{k: v for k, v in LLAMA_LAYER.items() if v[0] not in ("attn_norm", "mlp_norm")},
    "input_layernorm.weight": ("attn_norm", "scale"),
    "post_attention_layernorm.weight": ("post_attn_norm", "scale"),
    "pre_feedforward_layernorm.weight": ("mlp_norm", "scale"),
    "post_feedforward_layernorm.weight": ("post_mlp_norm", "scale"),
}
# Hugging Face suffix -> llama.cpp's, for the Gemma layout.
GEMMA_GGUF = {
    **{k: v for k, v in LLAMA_GGUF.items() if k in GEMMA_LAYER},
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
}
_KIND = {"sliding_attention": "sliding", "full_attention": "full"}

# llama.cpp's gemma2 defaults, for keys a GGUF may lack (llama-hparams / llama-model.cpp).
_GGUF_WINDOW = 4096
_GGUF_ATTN_CAP, _GGUF_FINAL_CAP = 50.0, 30.0
_LAYERS_27B = 46        # the one size whose query_pre_attn_scalar is hidden / heads (144)


def convert_layer(t: LayerTensors, arch) -> dict:
    return convert_table(t, GEMMA_LAYER)


def _layer_kinds(c: HFConfig, num_layers: int, default_pattern: int) -> tuple[str, ...]:
    """From layer_types (transformers >= 4.5x), else every `pattern`-th layer is full."""
    types = c.get("layer_types")
    if types is not None:
        unknown = set(types) - set(_KIND)
        if unknown or len(types) != num_layers:
            raise c.unsupported(f"layer_types {types}")
        return tuple(_KIND[t] for t in types)
    pattern = int(c.get("sliding_window_pattern", c.get("_sliding_window_pattern", default_pattern)))
    return tuple("full" if (i + 1) % pattern == 0 else "sliding" for i in range(num_layers))


def _rope(c: HFConfig) -> tuple[float, object, float]:
    """(global theta, global scaling, local theta). transformers >= 5 nests rope_parameters by
    layer type; older configs give rope_theta / rope_scaling and rope_local_base_freq."""
    params = c.get("rope_parameters") or {}
    if "full_attention" in params:
        theta, scaling = rope_settings(HFConfig({"rope_parameters": params["full_attention"]},
                                                c.family, c.source))
        local = params.get("sliding_attention", {})
        local_theta, local_scaling = rope_settings(HFConfig({"rope_parameters": local}, c.family, c.source))
        if local_scaling is not None:
            raise c.unsupported("RoPE scaling on sliding layers")
        return theta, scaling, local_theta
    theta, scaling = rope_settings(c)
    return theta, scaling, float(c.get("rope_local_base_freq", theta))


def read_gemma_config(c: HFConfig, *, qk_norm: bool, default_pattern: int) -> ModelArch:
    act = c.get("hidden_activation", c.get("hidden_act", "gelu_pytorch_tanh"))
    if act != "gelu_pytorch_tanh":
        raise c.unsupported(f"hidden_activation {act!r}")
    num_layers = int(c.require("num_hidden_layers"))
    kinds = _layer_kinds(c, num_layers, default_pattern)
    theta, scaling, local_theta = _rope(c)
    heads = int(c.require("num_attention_heads"))
    window = c.get("sliding_window")
    if "sliding" in kinds and window is None:
        raise MissingConfigField(f"{c.source} lacks 'sliding_window', which its sliding layers need")
    return ModelArch(
        family=c.family, vocab_size=int(c.require("vocab_size")), hidden_size=int(c.require("hidden_size")),
        intermediate_size=int(c.require("intermediate_size")), num_layers=num_layers,
        num_heads=heads, num_kv_heads=int(c.get("num_key_value_heads", heads)),
        head_dim=int(c.require("head_dim")), rope_theta=theta, rope_scaling=scaling,
        rope_local_theta=local_theta, rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
        max_position=int(c.get("max_position_embeddings", 8192)),
        tie_word_embeddings=bool(c.get("tie_word_embeddings", True)),
        qk_norm=qk_norm,
        sliding_window=None if window is None else int(window), layer_kinds=kinds,
        query_pre_attn_scalar=float(c.require("query_pre_attn_scalar")),
        attn_soft_cap=c.get("attn_logit_softcapping"), final_soft_cap=c.get("final_logit_softcapping"))


def read_hf_config(cfg: dict, source: str = "config.json"):
    c = HFConfig(cfg, NAME, source)
    if c.get("attention_bias", False):
        raise c.unsupported("attention_bias")
    return read_gemma_config(c, qk_norm=False, default_pattern=2)


def read_gguf_config(m: GGUFMeta):
    layers = int(m.arch_key("block_count", required=True))
    hidden = int(m.arch_key("embedding_length", required=True))
    heads = int(m.arch_key("attention.head_count", required=True))
    head_dim = int(m.arch_key("attention.key_length", hidden // heads))
    theta = float(m.arch_key("rope.freq_base", 10000.0))
    return llama_like_gguf_arch(
        m, NAME, head_dim=head_dim, rms_norm_eps=float(m.arch_key("attention.layer_norm_rms_epsilon", 1e-6)),
        layer_kinds=tuple("full" if i % 2 else "sliding" for i in range(layers)),
        sliding_window=int(m.arch_key("attention.sliding_window", _GGUF_WINDOW)),
        rope_theta=theta, rope_local_theta=theta,
        query_pre_attn_scalar=float(hidden // heads if layers == _LAYERS_27B else head_dim),
        attn_soft_cap=float(m.arch_key("attn_logit_softcapping", _GGUF_ATTN_CAP)),
        final_soft_cap=float(m.arch_key("final_logit_softcapping", _GGUF_FINAL_CAP)))


def gemma_family(name: str, hf_architecture: str, read_hf_config, read_gguf_config=None) -> ModelFamily:
    """A family on the Gemma decoder; GGUF files of `general.architecture = name` where
    read_gguf_config is given."""
    return ModelFamily(
        name=name, hf_architectures=(hf_architecture,), gguf_architectures=(name,) if read_gguf_config else (),
        read_hf_config=read_hf_config, read_gguf_config=read_gguf_config, convert_layer=convert_layer,
        gguf_tensor_names=GEMMA_GGUF, gguf_permutes_qk=False, forward=gemma.forward,
        layer_param_shapes=gemma.layer_param_shapes, init_random_params=gemma.init_random_params,
        tp_column=TP_COLUMN, tp_row=TP_ROW, arrange_layers=gemma.arrange_layers, hf_norm_offset=1.0)


FAMILY = gemma_family(NAME, "Gemma2ForCausalLM", read_hf_config, read_gguf_config)
