"""ModelRunner: owns the params and KV pools and the jitted steps. The only device code in the loop.

Per step shape, one jitted model pass (pools donated, so no step copies them) over the whole
ragged batch, then the sampler over its leading logits rows and, when the step verifies drafts,
the verifier over the rest (small; compiled per feature set). One device-to-host copy per step
brings back sampled tokens, logprobs and verdicts together.
"""
from __future__ import annotations

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


class ModelRunner:
    def __init__(self, arch: ModelArch, params, num_pages: int, page_size: int, dtype,
                 opts: AttentionOptions, mesh=None, bf16_matmuls: bool = False, kv_dtype=None):
        """mesh: a jax.sharding.Mesh to shard params and pools over (tensor parallel); None: one device.

        bf16_matmuls: the layers project in bfloat16 with f32 accumulation (see with_bf16_matmuls);
          everything else keeps dtype.
        kv_dtype: the KV cache's values; None (cache.dtype: auto): dtype.
        """
        self.arch = arch
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

        def model_step(params, kv: KVPages, batch: ModelBatch):
            counter.traced(f"model {batch.describe()}")
            return forward(params, kv, batch, arch=arch, opts=opts)

        # The step's logits rows: the sampled ones first, then the verified ones (step_inputs).
        def sample_step(logits, arrays: SamplingArrays, rows: int):
            # rows is static: with every stage off the arrays hold no per-row array to size it by.
            counter.traced(f"sampler B={rows} stages={','.join(arrays.active())} "
                           f"logprobs={arrays.num_logprobs}")
            return sample(logits[:rows], arrays)

        def verify_step(logits, arrays: SamplingArrays, judged):
            rows = judged.shape[0]
            counter.traced(f"verifier R={rows} stages={','.join(arrays.active())}")
            return verify(logits[logits.shape[0] - rows:], arrays, judged)

        self._model_step = jax.jit(model_step, donate_argnames=("kv",))
        self._sample_step = jax.jit(sample_step, static_argnames=("rows",))
        self._verify_step = jax.jit(verify_step)

    def step(self, inputs: StepInputs) -> tuple[SampleResult, VerifyResult | None]:
        """One model pass over a step's ragged batch, then sampling and verification of its
        logits rows; host numpy results, copied back together."""
        before = self.compiles.count
        t0 = time.perf_counter()
        logits, self.kv = self._model_step(self.params, self.kv, inputs.batch)
        sampled = self._sample_step(logits, inputs.sampling, rows=inputs.sample_rows)
        verified = None
        if inputs.verify_sampling is not None:
            verified = self._verify_step(logits, inputs.verify_sampling, inputs.judged)
        result = jax.device_get((sampled, verified))
        if self.compiles.count != before:
            self.compiles.seconds += time.perf_counter() - t0
        return result

    def run(self, batch: ModelBatch, arrays: SamplingArrays) -> SampleResult:
        """Run the model on a batch whose logits rows are all sampled (a draft model's step)."""
        before = self.compiles.count
        t0 = time.perf_counter()
        logits, self.kv = self._model_step(self.params, self.kv, batch)
        result = jax.device_get(self._sample_step(logits, arrays, rows=len(batch.logits_indices)))
        if self.compiles.count != before:
            self.compiles.seconds += time.perf_counter() - t0
        return result

    def sample_only(self, logits, arrays: SamplingArrays, rows: int) -> SampleResult:
        """The sampler alone over given logits (warm-up compiles its variants this way)."""
        return jax.device_get(self._sample_step(jnp.asarray(logits), arrays, rows=rows))

    def verify_only(self, logits, arrays: SamplingArrays, judged) -> VerifyResult:
        """The verifier alone over given logits (warm-up)."""
        return jax.device_get(self._verify_step(jnp.asarray(logits), arrays, jnp.asarray(judged)))

    def forward_only(self, batch: ModelBatch) -> None:
        """Write a batch's K/V without sampling (a draft model keeping its cache in step)."""
        _, self.kv = self._model_step(self.params, self.kv, batch)

    def logits(self, batch: ModelBatch) -> np.ndarray:
        """The model's logits for a batch (tests and numerics checks)."""
        logits, self.kv = self._model_step(self.params, self.kv, batch)
        return np.asarray(logits)
