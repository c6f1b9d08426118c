"""Times the attention kernels against their references and JAX's own Pallas GPU kernels.

Decode reports achieved HBM GB/s (K/V bytes the sequences own, read once) and prefill achieved
TFLOP/s (causal: only the score entries that are computed, 4*D flops each), each also as a
fraction of the device's peak when it is known (H100 SXM: 3.35 TB/s, 989 dense bf16 TFLOP/s).
Baselines: jax.experimental.pallas.ops.gpu.paged_attention (decode, same pages in its
[K, P, S, D] layout) and ...ops.gpu.attention.mha (prefill, dense contiguous K/V with kv heads
repeated, since it has no GQA or paging). On CPU the Pallas kernels run interpreted at small
shapes, so the tool can be smoke-tested anywhere; those timings mean nothing, but "reference"
against "xla (blocked)" (the CPU path) is a real comparison there.

  python tools/bench_kernels.py [--small] [--sweep] [--json out.json]
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pallas_kernels.paged_decode import reference as decode_ref  # noqa: E402
from pallas_kernels.paged_decode import xla as decode_xla  # noqa: E402
from pallas_kernels.paged_decode import triton as decode_triton  # noqa: E402
from pallas_kernels.ragged_prefill import reference as prefill_ref  # noqa: E402
from pallas_kernels.ragged_prefill import xla as prefill_xla  # noqa: E402
from pallas_kernels.ragged_prefill import triton as prefill_triton  # noqa: E402

PEAKS = {"H100": (3.35e12, 989e12), "H200": (4.8e12, 989e12)}   # HBM bytes/s, dense bf16 flop/s


def peaks() -> tuple[float | None, float | None]:
    kind = jax.devices()[0].device_kind
    return next((v for k, v in PEAKS.items() if k in kind), (None, None))


def time_s(fn, *args, iters: int) -> float:
    """Median seconds per call after a compile-and-warm call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decode_inputs(batch, context, heads, kv_heads, head_dim, page_size, dtype, seed=0):
    pages_per_seq = context // page_size
    num_pages = batch * pages_per_seq + 1
    keys = jax.random.split(jax.random.key(seed), 4)
    shape = (num_pages, page_size, kv_heads, head_dim)
    k = jax.random.normal(keys[0], shape, dtype)
    v = jax.random.normal(keys[1], shape, dtype)
    tables = jax.random.permutation(keys[2], jnp.arange(1, num_pages, dtype=jnp.int32))
    q = jax.random.normal(keys[3], (batch, heads, head_dim), dtype)
    return q, k, v, tables.reshape(batch, pages_per_seq), jnp.full((batch,), context, jnp.int32)


def prefill_inputs(num_seqs, q_len, context, heads, kv_heads, head_dim, page_size, dtype, seed=0):
    q, k, v, tables, _ = decode_inputs(num_seqs, context, heads, kv_heads, head_dim, page_size,
                                       dtype, seed)
    q = jax.random.normal(jax.random.key(seed + 7), (num_seqs * q_len, heads, head_dim), dtype)
    cu = jnp.arange(num_seqs + 1, dtype=jnp.int32) * q_len
    return q, k, v, tables, cu, jnp.full((num_seqs,), context, jnp.int32)


def bench_decode(shape: dict, impls: dict, iters: int, sweep: bool) -> dict:
    args = decode_inputs(**shape)
    q, k, v, tables, lengths = args
    kv_bytes = 2 * shape["batch"] * shape["context"] * shape["kv_heads"] * shape["head_dim"] * k.dtype.itemsize
    hbm_peak, _ = peaks()
    results = {}

    def record(name, fn, *fn_args):
        try:
            t = time_s(fn, *fn_args, iters=iters)
        except Exception as e:  # a baseline that cannot run here is reported, not fatal
            results[name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            _print_result(name, results[name])
            return
        gbps = kv_bytes / t / 1e9
        results[name] = {"us": t * 1e6, "GB/s": gbps,
                         "frac_peak": None if hbm_peak is None else gbps * 1e9 / hbm_peak}
        _print_result(name, results[name])

    record("reference", jax.jit(decode_ref.paged_decode_attention), *args)
    record("xla (blocked)", jax.jit(decode_xla.paged_decode_attention), *args)
    interpret = impls["interpret"]
    configs = [{}]
    if sweep:
        configs += [dict(block_kv=b, num_warps=w, num_stages=s, heads_fastest=f)
                    for b, (w, s), f in itertools.product(
                        [64, 128, 256], [(4, 2), (4, 3), (8, 2), (8, 4)], [False, True])]
        configs += [dict(num_splits=2, heads_fastest=f) for f in (False, True)]
    for cfg in configs:
        fn = jax.jit(lambda *a, cfg=cfg: decode_triton.paged_decode_attention(*a, interpret=interpret, **cfg))
        record("triton" + ("" if not cfg else " " + json.dumps(cfg)), fn, *args)
    if not interpret:
        from jax.experimental.pallas.ops.gpu import paged_attention as jax_paged
        k_hp, v_hp = jnp.moveaxis(k, 2, 0), jnp.moveaxis(v, 2, 0)   # its layout: [K, P, S, D]
        record("jax.pallas.ops.gpu.paged_attention", jax.jit(jax_paged.paged_attention),
               q, k_hp, v_hp, tables, lengths)
    return results


def bench_prefill(shape: dict, impls: dict, iters: int, sweep: bool) -> dict:
    args = prefill_inputs(**shape)
    q, k, v, tables, cu, kv_lens = args
    n, ql, ctx = shape["num_seqs"], shape["q_len"], shape["context"]
    # Causal score entries actually computed: query i (0-based) of a chunk sees ctx - ql + i + 1 keys.
    entries = n * (ql * (ctx - ql) + ql * (ql + 1) // 2) * shape["heads"]
    flops = 4 * shape["head_dim"] * entries
    _, flop_peak = peaks()
    results = {}

    def record(name, fn, *fn_args):
        try:
            t = time_s(fn, *fn_args, iters=iters)
        except Exception as e:
            results[name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            _print_result(name, results[name])
            return
        tflops = flops / t / 1e12
        results[name] = {"us": t * 1e6, "TFLOP/s": tflops,
                         "frac_peak": None if flop_peak is None else tflops * 1e12 / flop_peak}
        _print_result(name, results[name])

    record("reference", jax.jit(lambda *a: prefill_ref.ragged_prefill_attention(*a, max_q_len=ql)), *args)
    record("xla (blocked)", jax.jit(lambda *a: prefill_xla.ragged_prefill_attention(*a, max_q_len=ql)), *args)
    interpret = impls["interpret"]
    configs = [{}]
    if sweep:
        configs += [dict(block_q=bq, block_kv=bk, num_warps=w, num_stages=s)
                    for bq, bk, w, s in [(128, 64, 4, 2), (128, 64, 4, 3), (128, 64, 8, 2),
                                         (128, 128, 8, 2), (128, 128, 8, 3), (128, 32, 4, 3),
                                         (64, 64, 4, 3), (64, 128, 4, 2)]]
    for cfg in configs:
        fn = jax.jit(lambda *a, cfg=cfg: prefill_triton.ragged_prefill_attention(
            *a, max_q_len=ql, interpret=interpret, **cfg))
        record("triton" + ("" if not cfg else " " + json.dumps(cfg)), fn, *args)
    if not interpret and ql == ctx:
        from jax.experimental.pallas.ops.gpu import attention as jax_attention
        group = shape["heads"] // shape["kv_heads"]
        dense = lambda pages: jnp.repeat(pages[tables].reshape(n, ctx, shape["kv_heads"], shape["head_dim"]),
                                         group, axis=2)                    # [N, ctx, H, D]
        qd = q.reshape(n, ql, shape["heads"], shape["head_dim"])
        fn = jax.jit(lambda q_, k_, v_: jax_attention.mha(
            q_, k_, v_, None, sm_scale=1 / math.sqrt(shape["head_dim"]), causal=True))
        record("jax.pallas.ops.gpu.attention.mha (dense, kv repeated)", fn, qd, dense(k), dense(v))
    return results


def _print_result(name: str, r: dict) -> None:
    print(f"  {name:60s} " + ("  ".join(f"{k}={v:.3g}" for k, v in r.items() if v is not None)
                              if "error" not in r else r["error"]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny shapes (default on CPU)")
    parser.add_argument("--sweep", action="store_true", help="also try Triton block sizes")
    parser.add_argument("--kernels", default="decode,prefill", help="comma-separated subset")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--json", type=Path, default=Path("bench_results/kernels.json"))
    ns = parser.parse_args()
    on_gpu = jax.default_backend() == "gpu"
    small = ns.small or not on_gpu
    impls = {"interpret": not on_gpu}
    iters = ns.iters or (3 if small else 50)
    bf16 = "bfloat16"
    if small:
        decode_shapes = [dict(batch=4, context=64, heads=4, kv_heads=2, head_dim=64, page_size=16, dtype=bf16)]
        prefill_shapes = [dict(num_seqs=2, q_len=32, context=32, heads=4, kv_heads=2, head_dim=64,
                               page_size=16, dtype=bf16)]
    else:
        decode_shapes = [
            dict(batch=64, context=2048, heads=32, kv_heads=8, head_dim=128, page_size=16, dtype=bf16),
            dict(batch=8, context=2048, heads=32, kv_heads=8, head_dim=128, page_size=16, dtype=bf16),
            dict(batch=32, context=2048, heads=9, kv_heads=3, head_dim=64, page_size=16, dtype=bf16),
        ]
        prefill_shapes = [
            dict(num_seqs=8, q_len=2048, context=2048, heads=32, kv_heads=8, head_dim=128,
                 page_size=16, dtype=bf16),
            dict(num_seqs=8, q_len=512, context=2048, heads=32, kv_heads=8, head_dim=128,
                 page_size=16, dtype=bf16),
        ]
    report = {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
              "jax": jax.__version__, "python": platform.python_version(),
              "interpret": impls["interpret"], "decode": [], "prefill": []}
    # The block-size sweep runs on the first (headline) shape of each kernel only.
    decode_shapes = decode_shapes if "decode" in ns.kernels else []
    prefill_shapes = prefill_shapes if "prefill" in ns.kernels else []
    print(f"{report['device']}, jax {report['jax']}", flush=True)
    ns.json.parent.mkdir(parents=True, exist_ok=True)
    # Results are printed as they come and the JSON rewritten after each shape, so a run cut
    # short still leaves what it measured.
    for kind, shapes, bench in (("decode", decode_shapes, bench_decode),
                                ("prefill", prefill_shapes, bench_prefill)):
        for i, shape in enumerate(shapes):
            print(f"{kind} {shape}", flush=True)
            res = bench(shape, impls, iters, ns.sweep and i == 0)
            report[kind].append({"shape": shape, "results": res})
            ns.json.write_text(json.dumps(report, indent=1))
    print(f"wrote {ns.json}")


if __name__ == "__main__":
    main()
