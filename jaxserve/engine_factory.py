"""make_engine(config): the step-level engine a config asks for, with its model loaded.

Kept apart from both engines so neither imports the other: `Engine` knows nothing of
disaggregation, and `DisaggregatedEngine` builds two `Engine`s.
"""
from __future__ import annotations

import logging
import time

from jaxserve.config import EngineConfig
from jaxserve.interfaces import StepEngine
from jaxserve.loading import load_model


log = logging.getLogger(__name__)


def make_engine(config: EngineConfig) -> StepEngine:
    """An Engine, or a DisaggregatedEngine (prefill and decode meshes) when disagg.mode says so.

    Its `start_phases` holds the seconds of each part of getting here (loading.load_model's
    fetch, weights and tokenizer; device: params onto the devices and the KV pools allocated).
    """
    phases: dict[str, float] = {}
    arch, params, tokenizer, name = load_model(config, phases)
    t0 = time.perf_counter()
    if config.disagg.mode == "disaggregated":
        from jaxserve.disagg.engine import DisaggregatedEngine
        engine = DisaggregatedEngine(config, arch, params, tokenizer, name)
    else:
        from jaxserve.engine import Engine
        engine = Engine(config, arch, params, tokenizer, name)
    phases["device"] = time.perf_counter() - t0
    for phase, seconds in phases.items():
        log.info("start phase %s: %.2f s", phase, seconds)
    engine.start_phases = phases
    return engine
