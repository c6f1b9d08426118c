"""Reading a Hugging Face config.json into ModelArch fields, shared by the families.

Two layouts are in the wild: transformers < 5 writes `rope_theta` and `rope_scaling` at the top
level; transformers >= 5 writes both inside `rope_parameters`. Reading only the first is why
Qwen2 (rope_theta 1e6) loaded with the 10000 default and diverged from the first token.
"""
from __future__ import annotations

import math
from typing import Any

from jaxserve.model.arch import ROPE_TYPES, ModelArch, RopeScaling


class MissingConfigField(ValueError):
    """config.json lacks a field the family needs."""


class HFConfig:
    """config.json with errors that name the field and the family that needs it."""

    def __init__(self, cfg: dict, family: str, source: str = "config.json"):
        self.cfg = cfg
        self.family = family
        self.source = source

    def require(self, key: str) -> Any:
        value = self.cfg.get(key)
        if value is None:
            raise MissingConfigField(f"{self.source} lacks {key!r}, which the {self.family} family needs")
        return value

    def get(self, key: str, default: Any = None) -> Any:
        value = self.cfg.get(key)
        return default if value is None else value

    def unsupported(self, what: str) -> ValueError:
        return ValueError(f"{self.source}: {what} is not supported by the {self.family} family")


def rope_settings(c: HFConfig) -> tuple[float, RopeScaling | None]:
    """(rope_theta, scaling) from either config layout."""
    params = c.get("rope_parameters") or {}
    theta = params.get("rope_theta", c.get("rope_theta", 10000.0))
    scaling = dict(params) if params else dict(c.get("rope_scaling") or {})
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return float(theta), None
    if rope_type == "dynamic":
        raise c.unsupported(
            "rope_scaling.rope_type 'dynamic' (dynamic NTK recomputes the RoPE base from the longest "
            "sequence of each forward pass, so a token's rotation would depend on its batch and keys "
            "cached at shorter lengths keep the old base; a paged cache cannot reproduce that)")
    if rope_type not in ROPE_TYPES:
        raise c.unsupported(f"rope_scaling.rope_type {rope_type!r} (supported: {', '.join(ROPE_TYPES)})")

    def need(key):
        if scaling.get(key) is None:
            raise MissingConfigField(f"{c.source}: rope scaling {rope_type!r} lacks {key!r}")
        return scaling[key]

    if rope_type == "linear":
        return float(theta), RopeScaling(rope_type="linear", factor=float(need("factor")))
    if rope_type == "yarn":
        return float(theta), _yarn_scaling(c, scaling)
    return float(theta), RopeScaling(
        rope_type="llama3", factor=float(need("factor")),
        low_freq_factor=float(need("low_freq_factor")), high_freq_factor=float(need("high_freq_factor")),
        original_max_position=int(need("original_max_position_embeddings")))


def yarn_mscale(factor: float, m: float = 1.0) -> float:
    """YaRN's default attention factor for a context `factor` times the original."""
    return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0


def _yarn_scaling(c: HFConfig, scaling: dict) -> RopeScaling:
    """YaRN's parameters with transformers' defaults resolved (modeling_rope_utils): the
    pretraining length from the top level (Phi-3 style) before rope_scaling, else
    max_position_embeddings; factor from the two lengths where absent; attention_factor from
    mscale / mscale_all_dim, else 0.1 ln(factor) + 1."""
    max_position = c.get("max_position_embeddings")
    original = c.get("original_max_position_embeddings",
                     scaling.get("original_max_position_embeddings", max_position))
    if original is None:
        raise MissingConfigField(f"{c.source}: rope scaling 'yarn' lacks 'original_max_position_embeddings'")
    factor = scaling.get("factor")
    if factor is None:
        if max_position is None:
            raise MissingConfigField(f"{c.source}: rope scaling 'yarn' lacks 'factor'")
        factor = max_position / original

    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attention_factor = (yarn_mscale(factor, m) / yarn_mscale(factor, m_all) if m and m_all
                            else yarn_mscale(factor))
    return RopeScaling(rope_type="yarn", factor=float(factor), original_max_position=int(original),
                       attention_factor=float(attention_factor),
                       beta_fast=float(scaling.get("beta_fast") or 32),
                       beta_slow=float(scaling.get("beta_slow") or 1),
                       truncate=bool(scaling.get("truncate", True)))


def uniform_sliding_window(c: HFConfig) -> int | None:
    """The window every layer shares, or None. Mixed full/sliding layers need a family that
    scans over layer groups; here they raise rather than run every layer one way."""
    window = c.get("sliding_window")
    if c.cfg.get("use_sliding_window") is False:     # Qwen2/3 keep a window they do not use
        window = None
    kinds = set(c.get("layer_types") or ())
    if "sliding_attention" in kinds and "full_attention" in kinds:
        raise c.unsupported("mixing sliding-window and full-attention layers (layer_types)")
    if kinds == {"full_attention"}:
        window = None
    return None if window is None else int(window)


def llama_like_arch(c: HFConfig, **fields: Any) -> ModelArch:
    """The fields every Llama-like config spells the same way; `fields` adds or overrides."""
    heads = int(c.require("num_attention_heads"))
    hidden = int(c.require("hidden_size"))
    theta, scaling = rope_settings(c)
    if c.get("hidden_act", "silu") != "silu":
        raise c.unsupported(f"hidden_act {c.get('hidden_act')!r}")
    base = dict(
        family=c.family, vocab_size=int(c.require("vocab_size")), hidden_size=hidden,
        intermediate_size=int(c.require("intermediate_size")),
        num_layers=int(c.require("num_hidden_layers")), num_heads=heads,
        num_kv_heads=int(c.get("num_key_value_heads", heads)),
        head_dim=int(c.get("head_dim", hidden // heads)),
        rope_theta=theta, rope_scaling=scaling, rms_norm_eps=float(c.get("rms_norm_eps", 1e-5)),
        max_position=int(c.get("max_position_embeddings", 8192)),
        tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
        qkv_bias=bool(c.get("attention_bias", False)),
        sliding_window=uniform_sliding_window(c),
    )
    base.update(fields)
    return ModelArch(**base)
