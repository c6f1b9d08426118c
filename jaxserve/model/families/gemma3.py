"""Gemma 3 (text): the Gemma decoder with per-head q/k norm, no soft caps, five sliding layers
(local RoPE base, rope_local_base_freq) per full one (global base, with the 4B+ models' linear
scaling). Hugging Face checkpoints only for now (see gemma2.py on GGUF)."""
from __future__ import annotations

from jaxserve.model.families.gemma2 import gemma_family, read_gemma_config
from jaxserve.model.families.hf_config import HFConfig

NAME = "gemma3"


def read_hf_config(cfg: dict, source: str = "config.json"):
    c = HFConfig(cfg, NAME, source)
    if c.get("attention_bias", False):
        raise c.unsupported("attention_bias")
    return read_gemma_config(c, qk_norm=True, default_pattern=6)


FAMILY = gemma_family(NAME, "Gemma3ForCausalLM", read_hf_config)
