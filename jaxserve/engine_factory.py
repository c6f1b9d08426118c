"""make_engine(config): the step-level engine a config asks for, with its model loaded.

Kept apart from both engines so neither imports the other: `Engine` knows nothing of
disaggregation, and `DisaggregatedEngine` builds two `Engine`s.
"""
from __future__ import annotations

from jaxserve.config import EngineConfig
from jaxserve.interfaces import StepEngine
from jaxserve.loading import load_model


def make_engine(config: EngineConfig) -> StepEngine:
    """An Engine, or a DisaggregatedEngine (prefill and decode meshes) when disagg.mode says so."""
    arch, params, tokenizer, name = load_model(config)
    if config.disagg.mode == "disaggregated":
        from jaxserve.disagg.engine import DisaggregatedEngine
        return DisaggregatedEngine(config, arch, params, tokenizer, name)
    from jaxserve.engine import Engine
    return Engine(config, arch, params, tokenizer, name)
