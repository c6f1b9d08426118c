"""ModelRunner: owns the params and KV pools and the jitted steps. The only device code in the loop.

Per step shape, one jitted model pass (pools donated, so no step copies them) over the whole
ragged batch, then the sampler over its leading logits rows and, when the step verifies drafts,
the verifier over the rest (small; compiled per feature set). One device-to-host copy per step
brings back sampled tokens, logprobs and verdicts together.

launch() only dispatches (JAX runs it asynchronously) and starts that copy; LaunchedStep.fetch()
waits for it. The sampler also leaves its tokens on the device, padded to feed_rows, and the
next step's model pass can take its input tokens from there (StepInputs.token_src): that is how
the engine dispatches step N+1 before it has read step N's tokens (engine.py).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.kv_cache import KVPages, allocate_kv_pages
from jaxserve.model.arch import ModelArch
from jaxserve.model.attention import AttentionOptions, ModelBatch
from jaxserve.model.layers import with_bf16_matmuls
from jaxserve.model.registry import get_family
from jaxserve.sampler import SampleResult, SamplingArrays, sample
from jaxserve.spec.verify import VerifyResult, verify
from jaxserve.step_inputs import StepInputs

log = logging.getLogger(__name__)


class CompileCounter:
    """Counts traces of the jitted steps: a Python side effect runs only when JAX traces."""

    def __init__(self):
        self.count = 0
        self.seconds = 0.0
        self.keys: list[str] = []

    def traced(self, what: str) -> None:
        self.count += 1
        self.keys.append(what)
        log.info("compiling %s (compile #%d)", what, self.count)


@dataclasses.dataclass
class LaunchedStep:
    """A dispatched step: its results on the device, their copy to the host under way."""
    sampled: SampleResult
    verified: VerifyResult | None
    feed: jax.Array            # i32[feed_rows] the sampled tokens, for the next step's inputs

    def fetch(self) -> tuple[SampleResult, VerifyResult | None]:
        """Host numpy results (waits for the device)."""
        return jax.device_get((self.sampled, self.verified))


@functools.lru_cache(maxsize=64)
def _host_tokens(num_tokens: int) -> np.ndarray:
    """token_src of a batch whose tokens all come from the host."""
    return np.full(num_tokens, -1, np.int32)


class ModelRunner:
    def __init__(self, arch: ModelArch, params, num_pages: int, page_size: int, dtype,
                 opts: AttentionOptions, mesh=None, bf16_matmuls: bool = False, kv_dtype=None,
                 feed_rows: int = 64):
        """mesh: a jax.sharding.Mesh to shard params and pools over (tensor parallel); None: one device.

        bf16_matmuls: the layers project in bfloat16 with f32 accumulation (see with_bf16_matmuls);
          everything else keeps dtype.
        kv_dtype: the KV cache's values; None (cache.dtype: auto): dtype.
        feed_rows: the most sampled rows a step has (the device-side token feed's length).
        """
        self.arch = arch
        self._no_feed = jnp.zeros(feed_rows, jnp.int32)
        self.mesh = mesh
        family = get_family(arch.family)
        forward = family.forward
        params = jax.tree_util.tree_map(lambda x: np.asarray(x).astype(dtype), params)
        if bf16_matmuls and jnp.dtype(dtype) != jnp.bfloat16:
            params = with_bf16_matmuls(params)
        if mesh is None:
            self.params = jax.tree_util.tree_map(jnp.asarray, params)
            self.kv = allocate_kv_pages(arch, num_pages, page_size, kv_dtype or dtype)
        else:
            from jaxserve.sharding import kv_sharding, shard_params
            self.params = shard_params(params, mesh, family)
            self.kv = allocate_kv_pages(arch, num_pages, page_size, kv_dtype or dtype,
                                        sharding=kv_sharding(mesh, arch.num_kv_heads))
        self.opts = opts
        self.compiles = CompileCounter()
        counter = self.compiles

        def model_step(params, kv: KVPages, batch: ModelBatch, fed, token_src):
            counter.traced(f"model {batch.describe()}")
            tokens = jnp.where(token_src >= 0, fed[jnp.maximum(token_src, 0)], batch.tokens)
            return forward(params, kv, dataclasses.replace(batch, tokens=tokens), arch=arch, opts=opts)

        # The step's logits rows: the sampled ones first, then the verified ones (step_inputs).
        def sample_step(logits, arrays: SamplingArrays, rows: int):
            # rows is static: with every stage off the arrays hold no per-row array to size it by.
            counter.traced(f"sampler B={rows} stages={','.join(arrays.active())} "
                           f"logprobs={arrays.num_logprobs}")
            result = sample(logits[:rows], arrays)
            n = min(rows, feed_rows)
            return result, jnp.zeros(feed_rows, jnp.int32).at[:n].set(result.tokens[:n])

        def verify_step(logits, arrays: SamplingArrays, judged):
            rows = judged.shape[0]
            counter.traced(f"verifier R={rows} stages={','.join(arrays.active())}")
            return verify(logits[logits.shape[0] - rows:], arrays, judged)

        self._model_step = jax.jit(model_step, donate_argnames=("kv",))
        self._sample_step = jax.jit(sample_step, static_argnames=("rows",))
        self._verify_step = jax.jit(verify_step)

    def launch(self, inputs: StepInputs, fed: jax.Array | None = None) -> LaunchedStep:
        """Dispatch one model pass over a step's ragged batch, then sampling and verification
        of its logits rows, and start copying the results to the host; returns at once.

        fed: the previous step's LaunchedStep.feed, where inputs.token_src points (None: unused).
        """
        before = self.compiles.count
        t0 = time.perf_counter()
        src = inputs.token_src if inputs.token_src is not None else _host_tokens(len(inputs.batch.tokens))
        logits, self.kv = self._model_step(self.params, self.kv, inputs.batch,
                                           self._no_feed if fed is None else fed, src)
        sampled, feed = self._sample_step(logits, inputs.sampling, rows=inputs.sample_rows)
        verified = None
        if inputs.verify_sampling is not None:
            verified = self._verify_step(logits, inputs.verify_sampling, inputs.judged)
        for leaf in jax.tree_util.tree_leaves((sampled, verified)):
            leaf.copy_to_host_async()
        if self.compiles.count != before:   # tracing and compiling are synchronous
            self.compiles.seconds += time.perf_counter() - t0
        return LaunchedStep(sampled, verified, feed)

    def step(self, inputs: StepInputs) -> tuple[SampleResult, VerifyResult | None]:
        """launch(inputs) and wait for its host results."""
        return self.launch(inputs).fetch()

    def model_args(self, batch: ModelBatch) -> tuple:
        """_model_step's arguments for a batch whose tokens all come from the host (tests lower
        the program with these)."""
        return self.params, self.kv, batch, self._no_feed, _host_tokens(len(batch.tokens))

    def _model(self, batch: ModelBatch):
        """The model pass alone, every token from the host (draft runs, tests)."""
        logits, self.kv = self._model_step(*self.model_args(batch))
        return logits

    def run(self, batch: ModelBatch, arrays: SamplingArrays) -> SampleResult:
        """Run the model on a batch whose logits rows are all sampled (a draft model's step)."""
        before = self.compiles.count
        t0 = time.perf_counter()
        logits = self._model(batch)
        result = jax.device_get(self._sample_step(logits, arrays, rows=len(batch.logits_indices))[0])
        if self.compiles.count != before:
            self.compiles.seconds += time.perf_counter() - t0
        return result

    def sample_only(self, logits, arrays: SamplingArrays, rows: int) -> SampleResult:
        """The sampler alone over given logits (warm-up compiles its variants this way)."""
        return jax.device_get(self._sample_step(jnp.asarray(logits), arrays, rows=rows)[0])

    def verify_only(self, logits, arrays: SamplingArrays, judged) -> VerifyResult:
        """The verifier alone over given logits (warm-up)."""
        return jax.device_get(self._verify_step(jnp.asarray(logits), arrays, jnp.asarray(judged)))

    def forward_only(self, batch: ModelBatch) -> None:
        """Write a batch's K/V without sampling (a draft model keeping its cache in step)."""
        self._model(batch)

    def logits(self, batch: ModelBatch) -> np.ndarray:
        """The model's logits for a batch (tests and numerics checks)."""
        return np.asarray(self._model(batch))
