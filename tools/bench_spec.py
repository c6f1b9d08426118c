"""Speculative decoding on and off, in one run: tokens/s, acceptance rate and speedup.

    python tools/bench_spec.py --config configs/smollm2-135m.yaml --concurrency 1 8 \
        --output-len 128 --json spec.json

Two workloads through the model's chat template, greedy:
  repeat  the answer copies its prompt (repeat or lightly edit a passage of stdlib source or
          docs), where prompt-lookup proposals should mostly be accepted;
  chat    open questions, where proposals are mostly rejected (the "never slower" check).
For each workload and concurrency the same prompts run with speculative.method none and with
the chosen method; the outputs are also compared. In float32 (--exact) greedy output must not
change; with the shipped config's bf16 projections, a verify pass and a decode step round the
same positions' activations to bf16 in batches of different shapes, so near-ties can flip: the
tool reports how many requests stayed identical and where the others first differ.
"""
from __future__ import annotations

import argparse
import inspect
import json
import textwrap
import time
from pathlib import Path

QUESTIONS = [
    "What are three good habits for staying healthy?", "Explain what a hash table is.",
    "Write a short poem about autumn.", "Why is the sky blue?", "Give me tips for learning Python.",
    "What is the difference between a list and a tuple?", "Describe the water cycle.",
    "How do vaccines work?",
]


def repeat_prompts(n: int) -> list[str]:
    """Ask for (lightly edited) copies of real stdlib functions' source."""
    sources = [inspect.getsource(f) for f in (textwrap.dedent, textwrap.indent, json.dumps, json.loads,
                                              textwrap.shorten, inspect.getdoc, inspect.cleandoc,
                                              Path.with_suffix)]
    asks = ["Repeat this code exactly, then stop:", "Rewrite this code with the comments removed:"]
    return [f"{asks[i % 2]}\n\n{sources[i % len(sources)][:1200]}" for i in range(n)]


def make_llm(config: str, method: str, k: int, max_seqs: int, exact: bool):
    from jaxserve import LLM

    precision = dict(model__matmul_dtype="float32", cache__dtype="auto") if exact else {}
    llm = LLM(config, scheduler__max_num_seqs=max_seqs, cache__num_pages=1024,
              speculative__method=method, speculative__num_speculative_tokens=k, **precision)
    llm.engine.warmup()   # every model shape, so no timed run compiles one
    return llm


def run(llm, prompts: list[str], concurrency: int, output_len: int) -> dict:
    from jaxserve import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=output_len)
    llm.chat([[{"role": "user", "content": "hi"}]], params.replace(max_tokens=4), use_tqdm=False)
    before = llm.engine.stats()
    convs = [[{"role": "user", "content": p}] for p in prompts]
    t0 = time.perf_counter()
    outs = []
    for i in range(0, len(convs), concurrency):     # `concurrency` requests in flight at a time
        outs += llm.chat(convs[i:i + concurrency], params, use_tqdm=False)
    wall = time.perf_counter() - t0
    after = llm.engine.stats()
    tokens = sum(len(o.token_ids) for o in outs)
    proposed = after.spec_proposed_tokens - before.spec_proposed_tokens
    accepted = after.spec_accepted_tokens - before.spec_accepted_tokens
    return {"concurrency": concurrency, "output_tokens": tokens, "wall_s": wall,
            "tok_s": tokens / wall, "proposed": proposed, "accepted": accepted,
            "acceptance": accepted / proposed if proposed else None,
            "token_ids": [o.token_ids for o in outs]}


def first_differences(base: list[list[int]], spec: list[list[int]]) -> list[int]:
    """For each request whose tokens differ, the index of the first different token."""
    firsts = []
    for a, b in zip(base, spec):
        if a != b:
            firsts.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))))
    return firsts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/smollm2-135m.yaml")
    ap.add_argument("--method", default="ngram", choices=["ngram", "draft"])
    ap.add_argument("--k", type=int, default=7)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--exact", action="store_true",
                    help="float32 projections and cache whatever the config says")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    workloads = {"repeat": repeat_prompts(args.num_prompts), "chat": QUESTIONS[:args.num_prompts]}
    rows = []
    max_seqs = max(args.concurrency)
    base_llm = make_llm(args.config, "none", args.k, max_seqs, args.exact)
    spec_llm = make_llm(args.config, args.method, args.k, max_seqs, args.exact)
    for name, prompts in workloads.items():
        for c in args.concurrency:
            base = run(base_llm, prompts, c, args.output_len)
            spec = run(spec_llm, prompts, c, args.output_len)
            firsts = first_differences(base.pop("token_ids"), spec.pop("token_ids"))
            row = {"workload": name, "concurrency": c, "base_tok_s": base["tok_s"], "spec_tok_s": spec["tok_s"],
                   "speedup": spec["tok_s"] / base["tok_s"], "acceptance": spec["acceptance"],
                   "same_output": not firsts, "identical_requests": len(prompts) - len(firsts),
                   "first_differences": firsts, "base": base, "spec": spec}
            rows.append(row)
            acc = "-" if spec["acceptance"] is None else f"{spec['acceptance']:.2f}"
            where = f" (first different token: {', '.join(map(str, firsts))})" if firsts else ""
            print(f"{name:6s} c={c:2d}  off {base['tok_s']:7.1f} tok/s  {args.method} {spec['tok_s']:7.1f} tok/s  "
                  f"speedup {row['speedup']:.2f}x  acceptance {acc}  same output: "
                  f"{row['identical_requests']}/{len(prompts)}{where}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
