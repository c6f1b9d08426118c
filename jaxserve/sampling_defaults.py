"""What a request's unset sampling fields mean: the model's recommendation, else llama.cpp's.

An OpenAI-default request (temperature 1, no filters) makes a small model ramble: SmolLM2 answers
"What is the capital of France?" with "Sacré-Croix, une légère thérapée ...". So, as vLLM does,
fields a request leaves unset take the model's own recommended values (generation_config.json),
and where the model gives none, llama.cpp's server defaults. A config's `sampling_defaults`
section overrides both. Fields a request sets are always honoured as given.
"""
from __future__ import annotations

from typing import Any

# llama.cpp's server defaults (tools/server: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05).
LLAMA_CPP_DEFAULTS: dict[str, float | int] = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05}
FIELDS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")


def model_defaults(generation_config: dict[str, Any]) -> dict[str, Any]:
    """The sampling fields generation_config.json recommends (those it sets, numeric only)."""
    return {k: generation_config[k] for k in FIELDS
            if isinstance(generation_config.get(k), (int, float)) and not isinstance(generation_config.get(k), bool)}


def resolve_defaults(model: dict[str, Any], configured: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp's defaults <- the model's <- the config's (None there means: not set)."""
    out = dict(LLAMA_CPP_DEFAULTS) if not model else {}
    out.update(model)
    out.update({k: v for k, v in configured.items() if v is not None})
    return out


def served_defaults(tokenizer: Any, config: Any) -> dict[str, Any]:
    """What an HTTP request's unset fields become for this tokenizer (its model's
    generation_config) and this EngineConfig (its sampling_defaults section)."""
    import dataclasses
    return resolve_defaults(getattr(tokenizer, "sampling_defaults", {}),
                            dataclasses.asdict(config.sampling_defaults))
