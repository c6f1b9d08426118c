"""Colocated vs disaggregated on the same devices, one run, a mixed workload; TTFT, ITL, goodput.

    python tools/bench_disagg.py --config configs/smollm2-135m.yaml --devices 4 \
        --duration 60 --chat-rate 1.0 --long-rate 0.2 --json disagg.json --plot disagg.png

Workload (Poisson arrivals, the same seeded schedule for both modes): "chat" requests with short
prompts and --chat-output new tokens keep decoding while "long" requests with --long-prompt-len
prompts keep arriving; their prefill is what stalls colocated decoding. Colocated runs one engine
on device 0; disaggregated runs prefill on device 0 and decode on devices 1..N-1 (the config's
disagg section is replaced). Requests are driven in-process through the engine's own interface,
so the figures are the engine's, not an HTTP stack's.

Figures: TTFT and ITL p50/p99 per request class, output tok/s, and goodput: requests per second
whose TTFT <= --slo-ttft and whose mean inter-token time <= --slo-tpot.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _text_corpus import stdlib_docstrings, token_windows  # noqa: E402
from bench_offline import percentiles_ms  # noqa: E402


def _schedule(args, rng) -> list[tuple[float, str]]:
    events = []
    for kind, rate in (("chat", args.chat_rate), ("long", args.long_rate)):
        t = 0.0
        while rate > 0:
            t += rng.exponential(1.0 / rate)
            if t > args.duration:
                break
            events.append((t, kind))
    return sorted(events)


def run_mode(mode: str, args, schedule, prompts) -> dict:
    from jaxserve import LLM, SamplingParams

    overrides = dict(model__max_model_len=args.long_prompt_len + args.long_output + 64,
                     scheduler__max_num_seqs=args.max_num_seqs)
    if mode == "disaggregated":
        overrides.update(disagg__mode="disaggregated", disagg__prefill_devices=[0],
                         disagg__decode_devices=list(range(1, args.devices)))
    llm = LLM(args.config, **overrides)
    engine = llm.engine
    engine.warmup()
    params = {"chat": SamplingParams(temperature=0, max_tokens=args.chat_output, ignore_eos=True),
              "long": SamplingParams(temperature=0, max_tokens=args.long_output, ignore_eos=True)}
    arrivals, firsts, tokens, kinds = {}, {}, {}, {}
    start = time.perf_counter()
    i = 0
    while i < len(schedule) or engine.has_unfinished_requests():
        now = time.perf_counter() - start
        while i < len(schedule) and schedule[i][0] <= now:
            rid = f"r{i}"
            kind = schedule[i][1]
            engine.add_request(rid, prompts[kind][i % len(prompts[kind])], params[kind])
            arrivals[rid], kinds[rid] = start + schedule[i][0], kind
            i += 1
        if not engine.has_unfinished_requests():
            time.sleep(min(0.005, max(0.0, schedule[i][0] - now)) if i < len(schedule) else 0)
            continue
        for d in engine.step():
            if d.token_ids:
                t = time.perf_counter()
                firsts.setdefault(d.request_id, t)
                tokens.setdefault(d.request_id, []).append(t)
    wall = time.perf_counter() - start
    if hasattr(engine, "shutdown"):
        engine.shutdown()
    out = {"mode": mode, "wall_s": wall, "requests": len(arrivals),
           "output_tok_s": sum(len(v) for v in tokens.values()) / wall}
    good = 0
    for kind in ("chat", "long", "all"):
        ids = [r for r in arrivals if kind == "all" or kinds[r] == kind]
        ttft = [firsts[r] - arrivals[r] for r in ids if r in firsts]
        itl = [b - a for r in ids for a, b in zip(tokens.get(r, []), tokens.get(r, [])[1:])]
        out[kind] = {"ttft_ms": percentiles_ms(ttft), "itl_ms": percentiles_ms(itl), "n": len(ids)}
    for r in arrivals:
        ts = tokens.get(r, [])
        tpot = (ts[-1] - ts[0]) / (len(ts) - 1) if len(ts) > 1 else 0.0
        good += r in firsts and firsts[r] - arrivals[r] <= args.slo_ttft and tpot <= args.slo_tpot
    out["goodput_req_s"] = good / wall
    out["itl_samples_ms"] = [1e3 * (b - a) for r in arrivals for a, b in zip(tokens.get(r, []), tokens.get(r, [])[1:])]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/smollm2-135m.yaml")
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals")
    ap.add_argument("--chat-rate", type=float, default=1.0)
    ap.add_argument("--long-rate", type=float, default=0.2)
    ap.add_argument("--chat-prompt-len", type=int, default=32)
    ap.add_argument("--chat-output", type=int, default=64)
    ap.add_argument("--long-prompt-len", type=int, default=1024)
    ap.add_argument("--long-output", type=int, default=8)
    ap.add_argument("--max-num-seqs", type=int, default=32)
    ap.add_argument("--slo-ttft", type=float, default=5.0, help="seconds")
    ap.add_argument("--slo-tpot", type=float, default=0.25, help="seconds per output token")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", nargs="+", default=["colocated", "disaggregated"],
                    choices=["colocated", "disaggregated"])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()
    flag = f"--xla_force_host_platform_device_count={args.devices}"
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()

    from jaxserve.config import load_config
    from jaxserve.loading import load_model
    rng = np.random.default_rng(args.seed)
    schedule = _schedule(args, rng)
    _, _, tokenizer, _ = load_model(load_config(args.config))
    corpus = tokenizer.encode(stdlib_docstrings())
    prompts = {"chat": token_windows(corpus, 64, args.chat_prompt_len),
               "long": token_windows(corpus[len(corpus) // 2:], 16, args.long_prompt_len)}
    print(f"{len(schedule)} requests over {args.duration:.0f} s "
          f"({sum(k == 'long' for _, k in schedule)} long)")
    results = [run_mode(m, args, schedule, prompts) for m in args.modes]
    for r in results:
        print(f"\n{r['mode']}: {r['requests']} requests in {r['wall_s']:.1f} s, "
              f"{r['output_tok_s']:.1f} output tok/s, goodput {r['goodput_req_s']:.3f} req/s")
        for kind in ("chat", "long", "all"):
            t, i = r[kind]["ttft_ms"], r[kind]["itl_ms"]
            fmt = lambda v: "-" if v is None else f"{v:.0f}"
            print(f"  {kind:5s} n={r[kind]['n']:3d}  TTFT p50 {fmt(t['p50'])} p99 {fmt(t['p99'])} ms   "
                  f"ITL p50 {fmt(i['p50'])} p99 {fmt(i['p99'])} ms")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "results": [{k: v for k, v in r.items() if k != "itl_samples_ms"}
                                                     for r in results]}, indent=2))
    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: no plot")
            return
        fig, ax = plt.subplots(figsize=(7, 4))
        for r in results:
            xs = np.sort(r["itl_samples_ms"])
            ax.plot(xs, np.linspace(0, 1, len(xs)), label=r["mode"])
        ax.set_xscale("log")
        ax.set_xlabel("inter-token latency (ms)")
        ax.set_ylabel("fraction of gaps")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
