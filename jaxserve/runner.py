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

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve import executable_store
from jaxserve.kv_cache import KVPages, allocate_kv_pages
from jaxserve.model.arch import ModelArch
from jaxserve.model.attention import AttentionOptions, ModelBatch
from jaxserve.model.layers import with_bf16_matmuls
from jaxserve.model.registry import get_family
from jaxserve.programs import CompileCounter, StepFunction
from jaxserve.sampler import SampleResult, SamplingArrays, sample
from jaxserve.spec.verify import VerifyResult, verify
from jaxserve.step_inputs import StepInputs
from pallas_kernels.common import BF16_BITS

log = logging.getLogger(__name__)


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


def _host_params(params, dtype, bf16_matmuls: bool):
    """params in dtype, then lowered for bf16 matmuls (with_bf16_matmuls). Restored params are
    arrays of the right dtype already, lowered too where the param cache holds them so: only
    what differs is converted."""
    def cast(path, x):
        lowered = bf16_matmuls and (x.dtype == BF16_BITS
                                    or (getattr(path[0], "key", None) == "lm_head" and x.dtype == jnp.bfloat16))
        return x if x.dtype == dtype or lowered else np.asarray(x).astype(dtype)
    params = jax.tree_util.tree_map_with_path(cast, params)
    return with_bf16_matmuls(params) if bf16_matmuls else params


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
        # On a mesh the feed is placed (replicated) and the sampler's kept there, so a step fed
        # from the host and one fed from the device share one program.
        feed_sharding = None if mesh is None else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        self._no_feed = jnp.zeros(feed_rows, jnp.int32)
        if feed_sharding is not None:
            self._no_feed = jax.device_put(self._no_feed, feed_sharding)
        self.mesh = mesh
        family = get_family(arch.family)
        forward = family.forward
        params = _host_params(params, dtype, bf16_matmuls and jnp.dtype(dtype) != jnp.bfloat16)
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

        def model_step(params, kv: KVPages, batch: ModelBatch, fed, token_src):
            tokens = jnp.where(token_src >= 0, fed[jnp.maximum(token_src, 0)], batch.tokens)
            return forward(params, kv, dataclasses.replace(batch, tokens=tokens), arch=arch, opts=opts)

        # The step's logits rows: the sampled ones first, then the verified ones (step_inputs).
        def sample_step(logits, arrays: SamplingArrays, rows: int):
            # rows is static: with every stage off the arrays hold no per-row array to size it by.
            result = sample(logits[:rows], arrays)
            n = min(rows, feed_rows)
            feed = jnp.zeros(feed_rows, jnp.int32).at[:n].set(result.tokens[:n])
            if feed_sharding is not None:
                feed = jax.lax.with_sharding_constraint(feed, feed_sharding)
            return result, feed

        def verify_step(logits, arrays: SamplingArrays, judged):
            rows = judged.shape[0]
            return verify(logits[logits.shape[0] - rows:], arrays, judged)

        # What the programs close over: with the package's source and the machine
        # (executable_store.fingerprint), what makes a stored program valid for these arguments.
        devices = sorted(d.id for d in jax.tree_util.tree_leaves(self.kv)[0].sharding.device_set)
        fingerprint = executable_store.fingerprint(arch, opts, feed_rows, devices)
        root = executable_store.enabled_root()
        store = executable_store.ExecutableStore(root, fingerprint) if root is not None else None

        def step_fn(name, fn, describe, **jit_kw):
            return StepFunction(name, jax.jit(fn, **jit_kw), describe, self.compiles, fingerprint, store)

        self._model_step = step_fn(
            "model", model_step, lambda a, s: f"model {a[2].describe()}", donate_argnames=("kv",))
        self._sample_step = step_fn(
            "sampler", sample_step, lambda a, s: (
                f"sampler B={s['rows']} stages={','.join(a[1].active())} logprobs={a[1].num_logprobs}"),
            static_argnames=("rows",))
        self._verify_step = step_fn(
            "verifier", verify_step,
            lambda a, s: f"verifier R={a[2].shape[0]} stages={','.join(a[1].active())}")

    def launch(self, inputs: StepInputs, fed: jax.Array | None = None) -> LaunchedStep:
        """Dispatch one model pass over a step's ragged batch, then sampling and verification
        of its logits rows, and start copying the results to the host; returns at once.

        fed: the previous step's LaunchedStep.feed, where inputs.token_src points (None: unused).
        """
        src = inputs.token_src if inputs.token_src is not None else _host_tokens(len(inputs.batch.tokens))
        logits, self.kv = self._model_step(self.params, self.kv, inputs.batch,
                                           self._no_feed if fed is None else fed, src)
        sampled, feed = self._sample_step(logits, inputs.sampling, rows=inputs.sample_rows)
        verified = None
        if inputs.verify_sampling is not None:
            verified = self._verify_step(logits, inputs.verify_sampling, inputs.judged)
        for leaf in jax.tree_util.tree_leaves((sampled, verified)):
            leaf.copy_to_host_async()
        return LaunchedStep(sampled, verified, feed)

    def step(self, inputs: StepInputs) -> tuple[SampleResult, VerifyResult | None]:
        """launch(inputs) and wait for its host results."""
        return self.launch(inputs).fetch()

    def model_args(self, batch: ModelBatch) -> tuple:
        """_model_step's arguments for a batch whose tokens all come from the host (tests get
        its program with `_model_step.program(*model_args(batch))`)."""
        return self.params, self.kv, batch, self._no_feed, _host_tokens(len(batch.tokens))

    def _model(self, batch: ModelBatch):
        """The model pass alone, every token from the host (draft runs, tests)."""
        logits, self.kv = self._model_step(*self.model_args(batch))
        return logits

    def run(self, batch: ModelBatch, arrays: SamplingArrays) -> SampleResult:
        """Run the model on a batch whose logits rows are all sampled (a draft model's step)."""
        logits = self._model(batch)
        return jax.device_get(self._sample_step(logits, arrays, rows=len(batch.logits_indices))[0])

    # ---- building programs without running them (warm-up; safe on another thread) ----------

    def prepare_model(self, batch: ModelBatch) -> jax.ShapeDtypeStruct:
        """Build the model pass for batch's layout; returns the layout of its logits."""
        logits = self._model_step.program(*self.model_args(batch)).out_info[0]
        # Outputs are committed to their devices only where an input was: on a mesh (placed params).
        return jax.ShapeDtypeStruct(logits.shape, logits.dtype,
                                    sharding=logits.sharding if self.mesh is not None else None)

    def prepare_sampler(self, logits: jax.ShapeDtypeStruct, arrays: SamplingArrays, rows: int) -> None:
        self._sample_step.program(logits, arrays, rows=rows)

    def prepare_verifier(self, logits: jax.ShapeDtypeStruct, arrays: SamplingArrays, judged) -> None:
        self._verify_step.program(logits, arrays, np.asarray(judged))

    def forward_only(self, batch: ModelBatch) -> None:
        """Write a batch's K/V without sampling (a draft model keeping its cache in step)."""
        self._model(batch)

    def logits(self, batch: ModelBatch) -> np.ndarray:
        """The model's logits for a batch (tests and numerics checks)."""
        return np.asarray(self._model(batch))
