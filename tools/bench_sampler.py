"""Times one sampler step (jaxserve.sampler.sample, jitted) per batch size and vocabulary: the
sort-free filters against the full-vocabulary sort they replaced.

    python tools/bench_sampler.py [--iters 5] [--json bench_results/sampler.json]

Rows sample at temperature 0.8 with one of three filter sets: llama.cpp's server defaults
(top_k 40, top_p 0.95, min_p 0.05, which the HTTP server also applies to unset fields), top_p
0.9 alone (the case a bounded top-k cannot serve exactly), and no filter (temperature and draw
only: the floor both versions share). "sort" is the sampler with its filters stage swapped for
the previous implementation (a descending jnp.sort of every row, softmax and cumsum over it);
everything else, including the Gumbel draw, is the same program. Logits are random normals
(scale 3) on the default JAX device; state the hardware next to the figures.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jaxserve import SamplingParams  # noqa: E402
from jaxserve.outputs import RequestMetrics  # noqa: E402
from jaxserve.sampler import MASKED, build_sampling, filters, pipeline, sample  # noqa: E402
from jaxserve.sampler.stage import Stage  # noqa: E402
from jaxserve.sequence import Sequence  # noqa: E402
from jaxserve.step_inputs import Shapes  # noqa: E402

FILTER_SETS = {
    "llama.cpp defaults (k40 p0.95 minp0.05)": dict(top_k=40, top_p=0.95, min_p=0.05),
    "top_p 0.9 only": dict(top_p=0.9),
    "no filter": {},
}
BATCHES = (1, 32)
VOCABS = (49_152, 262_144)


def sort_filters(logits: jax.Array, f: filters.FilterArrays) -> jax.Array:
    """The filters before this change: a full descending sort of each row (the baseline)."""
    V = logits.shape[-1]
    sorted_desc = -jnp.sort(-logits, axis=-1)
    k = jnp.where(f.top_k > 0, jnp.minimum(f.top_k, V), V)
    kth = jnp.take_along_axis(sorted_desc, (k - 1)[:, None], axis=-1)
    sorted_desc = jnp.where(jnp.arange(V)[None, :] < k[:, None], sorted_desc, MASKED)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    num_keep = jnp.sum(before < f.top_p[:, None], axis=-1)
    pth = jnp.take_along_axis(sorted_desc, (num_keep - 1)[:, None], axis=-1)
    logits = jnp.where(logits < jnp.maximum(kth, pth), MASKED, logits)
    probs = jax.nn.softmax(logits, axis=-1)
    keep = probs >= f.min_p[:, None] * jnp.max(probs, axis=-1, keepdims=True)
    return jnp.where(keep, logits, MASKED)


def _jitted_sampler(filter_apply) -> callable:
    """jit(sample) traced with the given filters stage (the pipeline reads STAGES when it traces)."""
    stages = tuple(Stage(s.name, s.pack, filter_apply) if s.name == "filters" else s
                   for s in pipeline.STAGES)

    def step(logits, arrays):
        saved, pipeline.STAGES = pipeline.STAGES, stages
        try:
            return sample(logits, arrays).tokens
        finally:
            pipeline.STAGES = saved
    return jax.jit(step)


def _arrays(batch: int, vocab: int, fields: dict):
    shapes = Shapes(page_size=16, max_pages_per_seq=1, decode_buckets=(batch,), prefill_buckets=(16,),
                    max_prefill_seqs=1, history_len=1)
    seqs = [Sequence(seq_id=i, request_id=str(i), index=0, prompt_ids=[1], params=SamplingParams(
        temperature=0.8, seed=i, **fields), seed=i, metrics=RequestMetrics(arrival_s=0.0))
        for i in range(batch)]
    return build_sampling(seqs, batch, shapes)


def _time(fn, logits, arrays, iters: int) -> float:
    fn(logits, arrays).block_until_ready()   # compile
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn(logits, arrays).block_until_ready()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--vocabs", type=int, nargs="+", default=list(VOCABS))
    p.add_argument("--json", type=Path, default=Path("bench_results/sampler.json"))
    args = p.parse_args(argv)
    new, old = _jitted_sampler(filters.apply), _jitted_sampler(sort_filters)
    device = jax.devices()[0]
    print(f"device {device.device_kind} ({jax.default_backend()}), {platform.processor() or platform.machine()}, "
          f"jax {jax.__version__}; median of {args.iters}")
    print(f"{'filters':42}{'B':>4}{'V':>9}{'sort ms':>11}{'new ms':>10}{'speed-up':>10}")
    rows = []
    rng = np.random.default_rng(0)
    for name, fields in FILTER_SETS.items():
        for vocab in args.vocabs:
            for batch in args.batches:
                logits = jnp.asarray(rng.normal(scale=3.0, size=(batch, vocab)).astype(np.float32))
                arrays = _arrays(batch, vocab, fields)
                t_old = _time(old, logits, arrays, args.iters)
                t_new = _time(new, logits, arrays, args.iters)
                same = bool(np.array_equal(np.asarray(old(logits, arrays)), np.asarray(new(logits, arrays))))
                rows.append({"filters": name, "batch": batch, "vocab": vocab, "sort_ms": t_old * 1e3,
                             "new_ms": t_new * 1e3, "same_tokens": same})
                print(f"{name:42}{batch:>4}{vocab:>9}{t_old * 1e3:>11.2f}{t_new * 1e3:>10.2f}"
                      f"{t_old / t_new:>9.1f}x" + ("" if same else "   (tokens differ!)"))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"device": device.device_kind, "backend": jax.default_backend(),
                                     "jax": jax.__version__, "iters": args.iters, "rows": rows}, indent=1))
    print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
