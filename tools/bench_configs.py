"""Every shipped config, timed beside its colocated neighbour, so a 100x regression cannot land unseen.

    python tools/bench_configs.py                       # every configs/*.yaml
    python tools/bench_configs.py configs/smollm2-135m-disagg.yaml --json configs.json

Each config runs in its own child process (its own XLA device count, its own memory), through
the Python API as a user would: `LLM(path)`, one warm-up request, then two timed runs with the
same greedy token ids: one request alone, and --batch requests at once (--prompt-len tokens in,
--output-len out, ignore_eos). A disaggregated config is run a second time with
`disagg.mode=colocated` (same model, cache and scheduler; device 0) as its neighbour, and the
ratio of their output tokens/s is printed. With --max-slowdown R the tool exits 1 when any
config is more than R times slower than its neighbour (a guard, not a unit test: timings on a
shared CPU move 10-20%, so keep R loose).

Figures per run: load (LLM() until it returns: fetch, convert or restore, build the engine),
first request (it compiles what it touches), alone tok/s, batch tok/s (after an untimed batch
of the same shapes), and the compile counts (in all, and while timed: should be 0).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _child(config: str, colocated: bool, prompt_len: int, output_len: int, batch: int) -> dict:
    """Runs inside the child process: load, warm, time; returns the figures."""
    from jaxserve import LLM, SamplingParams
    from jaxserve.config import load_config

    overrides = {"disagg__mode": "colocated"} if colocated else {}
    t0 = time.perf_counter()
    llm = LLM(config, **overrides)
    load_s = time.perf_counter() - t0
    vocab = llm.tokenizer.vocab_size
    # Token ids from a fixed arithmetic walk over the vocabulary: no two prompts share a page.
    prompts = [[(7919 * (i * prompt_len + j) + 13) % (vocab - 256) + 256 for j in range(prompt_len)]
               for i in range(2 * batch + 2)]
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)

    def timed(batch_prompts) -> float:
        t0 = time.perf_counter()
        llm.generate(batch_prompts, params, use_tqdm=False)
        return time.perf_counter() - t0

    first_s = timed([prompts[0]])
    timed(prompts[2:2 + batch])              # warm-up of the batch's shapes, untimed
    compiles_before = llm.engine.stats().program_count
    alone_s = timed([prompts[1]])
    batch_s = timed(prompts[2 + batch:])
    timed_compiles = llm.engine.stats().program_count - compiles_before
    cfg = load_config(config)
    return {"config": config, "mode": "colocated" if colocated or cfg.disagg.mode == "colocated"
            else "disaggregated", "load_s": round(load_s, 2), "first_request_s": round(first_s, 2),
            "alone_tok_s": round(output_len / alone_s, 2),
            "batch_tok_s": round(batch * output_len / batch_s, 2),
            "compiles": llm.engine.stats().program_count, "compiles_while_timed": timed_compiles}


def _run(config: str, colocated: bool, args) -> dict:
    from jaxserve.config import load_config
    cfg = load_config(config)
    env = dict(os.environ)
    if cfg.disagg.mode == "disaggregated" and not colocated:
        devices = max((*cfg.disagg.prefill_devices, *cfg.disagg.decode_devices)) + 1
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT / 'tools')!r}); from bench_configs import _child; "
            f"print('RESULT ' + json.dumps(_child({config!r}, {colocated}, {args.prompt_len}, "
            f"{args.output_len}, {args.batch})))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=args.timeout)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"config": config, "mode": "colocated" if colocated else cfg.disagg.mode,
                "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(lines[-1][len("RESULT "):])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="*", help="default: every configs/*.yaml")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per child process")
    ap.add_argument("--max-slowdown", type=float, default=None,
                    help="exit 1 if a config is more than this many times slower than its neighbour")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    configs = args.configs or sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*.yaml"))
    from jaxserve.config import load_config
    rows, failed = [], False
    print(f"{'config':40s} {'mode':14s} {'load s':>7s} {'1st req s':>9s} {'alone tok/s':>11s} "
          f"{'batch tok/s':>11s} {'vs colocated':>12s} {'compiles':>8s}")
    for config in configs:
        runs = [_run(config, False, args)]
        if load_config(config).disagg.mode == "disaggregated":
            runs.append(_run(config, True, args))
        for run in runs:
            run["vs_colocated"] = None
            if len(runs) == 2 and run is runs[0] and "error" not in runs[0] and "error" not in runs[1]:
                run["vs_colocated"] = round(runs[0]["batch_tok_s"] / runs[1]["batch_tok_s"], 3)
            if "error" in run:
                failed = True
                print(f"{run['config']:40s} {run['mode']:14s} ERROR {run['error']}")
                continue
            ratio = "" if run["vs_colocated"] is None else f"{run['vs_colocated']:.2f}x"
            print(f"{run['config']:40s} {run['mode']:14s} {run['load_s']:7.1f} {run['first_request_s']:9.1f} "
                  f"{run['alone_tok_s']:11.1f} {run['batch_tok_s']:11.1f} {ratio:>12s} "
                  f"{run['compiles']:>4d}/{run['compiles_while_timed']}", flush=True)
            if args.max_slowdown and run["vs_colocated"] and run["vs_colocated"] < 1 / args.max_slowdown:
                failed = True
        rows.extend(runs)
    if args.json:
        args.json.write_text(json.dumps({"prompt_len": args.prompt_len, "output_len": args.output_len,
                                         "batch": args.batch, "runs": rows}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
