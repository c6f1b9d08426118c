"""load_model(config) -> (arch, params, tokenizer, served name): checkpoint, tokenizer and cache."""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import jax

from jaxserve.config import EngineConfig
from jaxserve.model.arch import ModelArch, tiny_arch
from jaxserve.model.registry import get_family
from jaxserve.model.source import KNOWN_MODELS, cache_dir, resolve_model_source
from jaxserve.model.weights import load_checkpoint
from jaxserve.tokenizer import Tokenizer

log = logging.getLogger(__name__)

TINY_RANDOM = "tiny-random"   # 2-layer random weights + the SmolLM2 tokenizer: fast logic tests


def load_model(config: EngineConfig, phases: dict[str, float] | None = None
               ) -> tuple[ModelArch, dict, Tokenizer, str]:
    """phases: where to add the seconds of each part (fetch, weights, tokenizer) of the load."""
    source = config.model.source
    t0 = time.perf_counter()
    timed = _PhaseTimer(phases if phases is not None else {})
    if source == TINY_RANDOM:
        with timed("fetch"):
            tok_path = resolve_model_source(next(iter(KNOWN_MODELS)))
        with timed("tokenizer"):
            tokenizer = Tokenizer.from_gguf(tok_path)
        arch = tiny_arch(vocab_size=tokenizer.vocab_size)
        with timed("weights"):
            params = get_family(arch.family).init_random_params(arch, jax.random.key(config.seed))
        name = TINY_RANDOM
    else:
        with timed("fetch"):
            path = resolve_model_source(source)
        ckpt_dir = Path(config.model.checkpoint_dir) if config.model.checkpoint_dir else cache_dir() / "params"
        with timed("weights"):   # converted from the source, or restored from the param cache
            arch, params = load_checkpoint(path, config.model.dtype, ckpt_dir, config.model.matmul_dtype)
        with timed("tokenizer"):
            tokenizer = Tokenizer.from_gguf(path) if path.suffix == ".gguf" else Tokenizer.from_hf_dir(path)
        name = source if source in KNOWN_MODELS else path.stem
    log.info("loaded %s in %.1f s: %s", source, time.perf_counter() - t0, arch)
    return arch, params, tokenizer, config.model.served_model_name or name


class _PhaseTimer:
    def __init__(self, phases: dict[str, float]):
        self.phases = phases

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        yield
        self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t0


def load_draft(config: EngineConfig, vocab_size: int) -> tuple[ModelArch, dict]:
    """The speculative draft model's weights; it must share the target's vocabulary."""
    spec = config.speculative
    if spec.draft_source == TINY_RANDOM:
        arch = tiny_arch(vocab_size=vocab_size)
        return arch, get_family(arch.family).init_random_params(arch, jax.random.key(config.seed + 1))
    path = resolve_model_source(spec.draft_source)
    ckpt_dir = Path(config.model.checkpoint_dir) if config.model.checkpoint_dir else cache_dir() / "params"
    arch, params = load_checkpoint(path, spec.draft_dtype, ckpt_dir)
    if arch.vocab_size != vocab_size:
        raise ValueError(f"speculative.draft_source has vocabulary {arch.vocab_size}, "
                         f"the target {vocab_size}: they must share the tokenizer")
    return arch, params
