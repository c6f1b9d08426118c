"""Serving benchmark: an OpenAI-API load generator for jaxserve, vLLM, llama.cpp's server, ...

    python tools/bench_serving.py --base-url http://127.0.0.1:8000 --num-prompts 64 \
        --input-len 128 --output-len 64 --concurrency 8
    python tools/bench_serving.py --request-rate 2 --slo-ttft 1.0 --slo-tpot 0.1 ...

Prompts are real English text: docstrings of Python's own standard library (public domain-like,
present on every machine), cut at random offsets to --input-len tokens. Token counts come from
the server's /tokenize when it has one (jaxserve/vLLM or llama.cpp shape), else one whitespace
word counts as one token. Every request streams, asks for exactly --output-len tokens
(max_tokens + ignore_eos, unless --no-ignore-eos) and usage in the last chunk.

Load: --concurrency N keeps N requests in flight (closed loop); --request-rate R sends Poisson
arrivals at R requests/s (optionally capped by --max-concurrency). Reports request and output-token
throughput, TTFT, TPOT (time per output token after the first), ITL (gap between streamed chunks)
and end-to-end latency at mean/p50/p90/p99, and goodput: requests/s meeting both --slo-ttft and
--slo-tpot. Writes the results to --out (JSON) and latency histograms to --plot (PNG, needs
matplotlib). Always state the hardware and server config next to the numbers.

The dashboard (jaxserve only): --record-dashboard FILE.html reads /debug/state once a second
during the run and writes the dashboard playing those frames back (one self-contained file,
opens offline); --dashboard-reader keeps one /debug/state/stream connection open during the
run, as a watching browser does, so a run with it against one without shows what watching costs.

Structured outputs (--structured on|both): each request carries one of a few realistic JSON
schemas (STRUCTURED_SCHEMAS, in turn) and a line asking for that JSON after its text. The schema
goes in OpenAI's `response_format` (json_schema; jaxserve, vLLM and llama.cpp's server all take
it) or, with --schema-field json_schema, in llama.cpp's own top-level `json_schema` field. A
grammar ends the output, so constrained requests never send ignore_eos (llama.cpp would have no
token left once the JSON is closed); --output-len stays the cap. "both" runs the same prompts
constrained then unconstrained (each prompt with a different first word, so no prompt cache
serves the second pass) and prints the throughput ratio. Outputs that finished with
"stop" are checked against their schema (jsonschema). Against jaxserve the host time spent
filling grammar masks is read from /metrics (jaxserve:grammar_mask_seconds / _batches) before
and after the run and printed per sampler batch. The comparison with llama.cpp, same prompts:

    jaxserve serve --config configs/smollm2-135m.yaml --port 8000 &
    llama-server -m <the same GGUF> --port 8080 -np 32 -c 65536 &
    for url in http://127.0.0.1:8000 http://127.0.0.1:8080; do for c in 1 32; do
      python tools/bench_serving.py --base-url $url --endpoint chat --structured both \
          --concurrency $c --num-prompts 64 --input-len 256 --output-len 128 \
          --out bench_results/structured_${url##*:}_c$c.json; done; done
"""
from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import sys
import sysconfig
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

# Realistic extraction / agent payloads; strings bounded as production schemas usually are.
STRUCTURED_SCHEMAS: dict[str, dict] = {
    "contact": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 40},
        "email": {"type": "string", "pattern": "^[a-z0-9._]{1,20}@[a-z0-9]{1,15}\\.[a-z]{2,4}$"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 4}},
        "required": ["name", "email", "age", "tags"], "additionalProperties": False},
    "review": {"type": "object", "properties": {
        "sentiment": {"enum": ["positive", "negative", "neutral"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "summary": {"type": "string", "maxLength": 120},
        "keywords": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 1, "maxItems": 5}},
        "required": ["sentiment", "score", "summary", "keywords"], "additionalProperties": False},
    "event": {"type": "object", "properties": {
        "title": {"type": "string", "maxLength": 60},
        "date": {"type": "string", "pattern": "^20[0-9]{2}-[01][0-9]-[0-3][0-9]$"},
        "location": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                      "country": {"type": "string", "maxLength": 30}},
                     "required": ["city", "country"], "additionalProperties": False},
        "attendees": {"type": "integer", "minimum": 1, "maximum": 100000}},
        "required": ["title", "date", "location", "attendees"], "additionalProperties": False},
    "order": {"type": "object", "properties": {
        "items": {"type": "array", "minItems": 1, "maxItems": 5, "items": {
            "type": "object", "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                                             "quantity": {"type": "integer", "minimum": 1, "maximum": 99}},
            "required": ["sku", "quantity"], "additionalProperties": False}},
        "status": {"enum": ["pending", "shipped", "delivered", "cancelled"]},
        "express": {"type": "boolean"}},
        "required": ["items", "status", "express"], "additionalProperties": False},
}


@dataclass
class Result:
    ok: bool
    prompt_tokens: int
    output_tokens: int = 0
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    error: str = ""
    schema: str | None = None           # structured: the STRUCTURED_SCHEMAS entry it carried
    finish_reason: str | None = None
    valid: bool | None = None           # structured, finished with "stop": output fits the schema

    @property
    def tpot_s(self) -> float | None:
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1) if self.output_tokens > 1 else None


# -- prompts -----------------------------------------------------------------------------------

def stdlib_words(max_words: int = 400_000) -> list[str]:
    """Words of the standard library's docstrings, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    words: list[str] = []
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    words.extend(doc.split())
        if len(words) >= max_words:
            break
    return words


class TokenCounter:
    """Counts tokens with the server's /tokenize (two known shapes), else by whitespace words."""

    def __init__(self, client: httpx.Client, model: str):
        self.client, self.model, self.kind = client, model, "words"
        for kind in ("openai", "llamacpp"):
            try:
                if self._count(kind, "hello world") > 0:
                    self.kind = kind
                    break
            except (httpx.HTTPError, KeyError, ValueError, TypeError):
                continue

    def _count(self, kind: str, text: str) -> int:
        if kind == "openai":
            r = self.client.post("/tokenize", json={"model": self.model, "prompt": text,
                                                   "add_special_tokens": False})
        else:
            r = self.client.post("/tokenize", json={"content": text})
        r.raise_for_status()
        return len(r.json()["tokens"])

    def count(self, text: str) -> int:
        return len(text.split()) if self.kind == "words" else self._count(self.kind, text)


def build_prompts(words: list[str], counter: TokenCounter, num: int, input_len: int,
                  rng: random.Random) -> list[tuple[str, int]]:
    """num (prompt, token count) pairs of about input_len tokens each, at random offsets."""
    # Counted 20 words at a time: /tokenize refuses texts longer than the server's context.
    sample = words[:400]
    per_word = sum(counter.count(" ".join(sample[i:i + 20])) for i in range(0, len(sample), 20)) / len(sample)
    prompts = []
    for _ in range(num):
        guess = max(1, round(input_len / per_word))
        best = None
        while best is None:   # retried only when the first word alone is too long
            start = rng.randrange(0, max(1, len(words) - 3 * guess))
            # Binary search: the most words whose token count is still <= input_len.
            lo, hi = 1, 3 * guess + 8
            while lo <= hi:
                mid = (lo + hi) // 2
                text = " ".join(words[start:start + mid])
                n = counter.count(text)
                if n <= input_len:
                    lo, best = mid + 1, (text, n)
                else:
                    hi = mid - 1
        prompts.append(best)
    return prompts


# -- one request -------------------------------------------------------------------------------

def constrain(body: dict, schema_name: str, field: str) -> None:
    """Put a JSON schema into a request body: OpenAI's response_format or llama.cpp's json_schema."""
    schema = STRUCTURED_SCHEMAS[schema_name]
    if field == "json_schema":
        body["json_schema"] = schema
    else:
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": schema_name, "schema": schema, "strict": True}}


def check_output(schema_name: str, text: str) -> bool:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    try:
        import jsonschema
    except ImportError:   # parse check only
        return True
    return jsonschema.Draft202012Validator(STRUCTURED_SCHEMAS[schema_name]).is_valid(value)


async def send(client: httpx.AsyncClient, args: argparse.Namespace, model: str, prompt: str,
               prompt_tokens: int, schema: str | None = None, max_tokens: int | None = None) -> Result:
    body: dict = {"model": model, "max_tokens": max_tokens or args.output_len, "stream": True,
                  "temperature": args.temperature, "stream_options": {"include_usage": True}}
    if schema is not None:
        constrain(body, schema, args.schema_field)
    elif not args.no_ignore_eos:
        body["ignore_eos"] = True
    if args.endpoint == "chat":
        path, body["messages"] = "/v1/chat/completions", [{"role": "user", "content": prompt}]
    else:
        path, body["prompt"] = "/v1/completions", prompt
    res = Result(ok=False, prompt_tokens=prompt_tokens, schema=schema)
    start = last = time.perf_counter()
    chunks = 0
    pieces: list[str] = []
    try:
        async with client.stream("POST", path, json=body) as r:
            if r.status_code != 200:
                res.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return res
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                msg = json.loads(data)
                if "error" in msg:
                    res.error = str(msg["error"])[:200]
                    return res
                if msg.get("usage"):
                    res.output_tokens = msg["usage"]["completion_tokens"]
                    res.prompt_tokens = msg["usage"].get("prompt_tokens", prompt_tokens)
                for choice in msg.get("choices") or []:
                    res.finish_reason = choice.get("finish_reason") or res.finish_reason
                    text = choice.get("text") if args.endpoint != "chat" else \
                        (choice.get("delta") or {}).get("content")
                    if not text:
                        continue
                    pieces.append(text)
                    now = time.perf_counter()
                    if chunks == 0:
                        res.ttft_s = now - start
                    else:
                        res.itl_s.append(now - last)
                    last, chunks = now, chunks + 1
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        res.error = f"{type(e).__name__}: {e}"
        return res
    res.e2e_s = time.perf_counter() - start
    res.output_tokens = res.output_tokens or chunks   # no usage: one chunk ~ one token
    res.ok = chunks > 0
    res.error = "" if res.ok else "no output"
    if schema is not None and res.finish_reason == "stop":
        res.valid = check_output(schema, "".join(pieces))
    return res


async def run_load(args: argparse.Namespace, model: str, prompts: list[tuple[str, int]],
                   schemas: list[str | None] | None = None, lengths: list[int | None] | None = None
                   ) -> tuple[list[Result], float]:
    """schemas[i]: the STRUCTURED_SCHEMAS entry request i carries (None: unconstrained);
    lengths[i]: its max_tokens (None: --output-len)."""
    schemas = schemas or [None] * len(prompts)
    lengths = lengths or [None] * len(prompts)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limit = args.concurrency or args.max_concurrency or len(prompts)
    async with httpx.AsyncClient(base_url=args.base_url, headers=headers, timeout=args.timeout,
                                 limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
                                 ) as client:
        for _ in range(args.warmup_requests):
            await send(client, args, model, prompts[0][0], prompts[0][1], schemas[0])
        sem = asyncio.Semaphore(limit)
        rng = random.Random(args.seed + 1)

        async def one(prompt: str, n: int, schema: str | None, length: int | None) -> Result:
            async with sem:
                return await send(client, args, model, prompt, n, schema, length)

        start = time.perf_counter()
        tasks = []
        for (prompt, n), schema, length in zip(prompts, schemas, lengths):
            tasks.append(asyncio.create_task(one(prompt, n, schema, length)))
            if args.request_rate and math.isfinite(args.request_rate):
                await asyncio.sleep(rng.expovariate(args.request_rate))
        results = await asyncio.gather(*tasks)
        return list(results), time.perf_counter() - start


# -- report ------------------------------------------------------------------------------------

def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": float("nan"), "p50": float("nan"), "p90": float("nan"), "p99": float("nan")}
    v = sorted(values)

    def q(p: float) -> float:   # linear interpolation between closest ranks
        k = (len(v) - 1) * p
        lo, hi = math.floor(k), math.ceil(k)
        return v[lo] + (v[hi] - v[lo]) * (k - lo)

    return {"mean": sum(v) / len(v), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99)}


def summarize(args: argparse.Namespace, model: str, results: list[Result], duration_s: float) -> dict:
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    tpots = [r.tpot_s for r in ok if r.tpot_s is not None]
    good = [r for r in ok if r.ttft_s <= args.slo_ttft and (r.tpot_s or 0.0) <= args.slo_tpot]
    return {
        "server": args.base_url, "model": model, "endpoint": args.endpoint,
        "client_host": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "load": {"num_prompts": len(results), "input_len": args.input_len, "output_len": args.output_len,
                 "concurrency": args.concurrency, "request_rate": args.request_rate,
                 "max_concurrency": args.max_concurrency,
                 "ignore_eos": not args.no_ignore_eos and not any(r.schema for r in results)},
        "duration_s": duration_s, "completed": len(ok), "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if not r.ok})[:5],
        "mean_input_tokens": sum(r.prompt_tokens for r in ok) / max(1, len(ok)),
        "total_output_tokens": out_tokens,
        "request_throughput_rps": len(ok) / duration_s,
        "output_throughput_tps": out_tokens / duration_s,
        "total_token_throughput_tps": (out_tokens + sum(r.prompt_tokens for r in ok)) / duration_s,
        "goodput_rps": len(good) / duration_s,
        "slo": {"ttft_s": args.slo_ttft, "tpot_s": args.slo_tpot},
        "ttft_s": percentiles([r.ttft_s for r in ok]),
        "tpot_s": percentiles(tpots),
        "itl_s": percentiles([x for r in ok for x in r.itl_s]),
        "e2e_s": percentiles([r.e2e_s for r in ok]),
        "structured": None if not any(r.schema for r in results) else {
            "field": args.schema_field, "schemas": sorted({r.schema for r in results if r.schema}),
            "finished_stop": sum(r.finish_reason == "stop" for r in ok),
            "valid": sum(bool(r.valid) for r in ok), "invalid": sum(r.valid is False for r in ok)},
    }


def read_mask_counters(client: httpx.Client) -> tuple[float, float] | None:
    """(seconds, batches) of jaxserve's grammar-mask counters; None for servers without them."""
    try:
        text = client.get("/metrics").text
    except httpx.HTTPError:
        return None
    values = {}
    for line in text.splitlines():
        for name in ("jaxserve:grammar_mask_seconds_total", "jaxserve:grammar_mask_batches_total"):
            if line.startswith(name + " "):
                values[name] = float(line.split()[1])
    if len(values) != 2:
        return None
    return values["jaxserve:grammar_mask_seconds_total"], values["jaxserve:grammar_mask_batches_total"]


def mask_time(before, after, duration_s: float) -> dict | None:
    if before is None or after is None or after[1] <= before[1]:
        return None
    seconds, batches = after[0] - before[0], after[1] - before[1]
    return {"seconds": seconds, "batches": batches, "ms_per_batch": 1e3 * seconds / batches,
            "share_of_wall": seconds / duration_s}


def print_summary(s: dict) -> None:
    print(f"\n== {s['model']} at {s['server']} ({s['endpoint']}), client {s['client_host']['platform']}, "
          f"{s['client_host']['cpus']} CPUs ==")
    print(f"{s['completed']} ok / {s['failed']} failed in {s['duration_s']:.2f} s"
          + (f"; errors: {s['errors']}" if s["errors"] else ""))
    print(f"mean input tokens        {s['mean_input_tokens']:.1f}")
    print(f"request throughput       {s['request_throughput_rps']:.3f} req/s")
    print(f"output throughput        {s['output_throughput_tps']:.1f} tok/s")
    print(f"goodput (TTFT<={s['slo']['ttft_s']}s, TPOT<={s['slo']['tpot_s']}s)  {s['goodput_rps']:.3f} req/s")
    print(f"{'':10}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}   (ms)")
    for key in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
        row = s[key]
        print(f"{key[:-2].upper():10}" + "".join(f"{row[c] * 1000:10.1f}" for c in ("mean", "p50", "p90", "p99")))
    if s.get("structured"):
        st = s["structured"]
        print(f"structured ({st['field']}: {', '.join(st['schemas'])}): {st['finished_stop']} finished with "
              f"stop, {st['valid']} valid, {st['invalid']} invalid")
    if s.get("grammar_mask"):
        m = s["grammar_mask"]
        print(f"host grammar-mask time   {m['ms_per_batch']:.3f} ms per sampler batch over {m['batches']:.0f} "
              f"batches ({100 * m['share_of_wall']:.1f}% of wall time)")


def plot(results: list[Result], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; skipping the latency plot")
        return
    ok = [r for r in results if r.ok]
    series = {"TTFT (s)": [r.ttft_s for r in ok], "TPOT (s)": [r.tpot_s for r in ok if r.tpot_s is not None],
              "ITL (s)": [x for r in ok for x in r.itl_s], "E2E latency (s)": [r.e2e_s for r in ok]}
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (name, values) in zip(axes.flat, series.items()):
        ax.hist(values, bins=40)
        ax.set_title(name)
        ax.set_ylabel("count")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--model", help="default: the first model of /v1/models")
    p.add_argument("--api-key", default=os.environ.get("JAXSERVE_API_KEY"))
    p.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--concurrency", type=int, help="closed loop: this many requests in flight")
    p.add_argument("--request-rate", type=float, help="Poisson arrivals per second (inf: all at once)")
    p.add_argument("--max-concurrency", type=int, help="cap on in-flight requests with --request-rate")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--no-ignore-eos", action="store_true", help="let the model stop before --output-len")
    p.add_argument("--slo-ttft", type=float, default=1.0, help="seconds")
    p.add_argument("--slo-tpot", type=float, default=0.1, help="seconds per output token")
    p.add_argument("--warmup-requests", type=int, default=1)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench_results/serving.json"))
    p.add_argument("--plot", type=Path, default=Path("bench_results/serving.png"))
    p.add_argument("--record-dashboard", type=Path, metavar="HTML",
                   help="read jaxserve's /debug/state once a second during the run and write the "
                        "dashboard playing it back, one self-contained HTML file")
    p.add_argument("--record-interval", type=float, default=1.0, help="seconds between recorded frames")
    p.add_argument("--dashboard-reader", action="store_true",
                   help="keep one reader on /debug/state/stream during the run, as an open "
                        "dashboard does (to measure what watching costs)")
    p.add_argument("--structured", choices=["off", "on", "both"], default="off",
                   help="a JSON schema per request; both: unconstrained run (same token counts) then constrained")
    p.add_argument("--schema-field", choices=["response_format", "json_schema"], default="response_format",
                   help="json_schema: llama.cpp's own top-level field")
    args = p.parse_args(argv)
    if args.concurrency is None and args.request_rate is None:
        args.concurrency = 8
    if args.concurrency is not None and args.request_rate is not None:
        p.error("give --concurrency or --request-rate, not both")

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(base_url=args.base_url, headers=headers, timeout=60) as client:
        model = args.model or client.get("/v1/models").raise_for_status().json()["data"][0]["id"]
        counter = TokenCounter(client, model)
        print(f"model {model}; counting tokens with: {counter.kind}")
        prompts = build_prompts(stdlib_words(), counter, args.num_prompts, args.input_len,
                                random.Random(args.seed))
    if args.structured == "off":
        runs = {"unconstrained": _run(args, model, prompts)}
    else:
        names = list(STRUCTURED_SCHEMAS)
        schemas = [names[i % len(names)] for i in range(len(prompts))]
        prompts = [(f"{text}\n\nWrite a JSON {schema} record about the text above.", n)
                   for (text, n), schema in zip(prompts, schemas)]
        runs = {"constrained": _run(args, model, prompts, schemas)}
        if args.structured == "both":   # same prompts, each capped at the tokens its constrained twin got
            lengths = [max(1, r.output_tokens) for r in runs["constrained"][0]]
            # A different first token, so neither server's prompt cache holds what the constrained
            # pass just prefilled: otherwise the second pass skips prefill and the ratio mostly
            # measures that (a few tokens more; the counts shown are the constrained prompts').
            fresh = [(f"Again: {text}", n) for text, n in prompts]
            runs = {"unconstrained": _run(args, model, fresh, lengths=lengths)} | runs
    out: dict = {}
    for name, (results, summary) in runs.items():
        print(f"\n-- {name}")
        print_summary(summary)
        out[name] = summary | {"requests": [asdict(r) | {"tpot_s": r.tpot_s} for r in results]}
    summary = runs[next(iter(runs))][1] if len(runs) == 1 else {k: v[1] for k, v in runs.items()}
    if len(runs) == 2:
        base = runs["unconstrained"][1]["output_throughput_tps"]
        ratio = runs["constrained"][1]["output_throughput_tps"] / base if base else None
        summary["constrained_over_unconstrained"] = out["constrained_over_unconstrained"] = ratio
        print(f"\nconstrained / unconstrained output tokens/s: {ratio:.3f}" if ratio is not None
              else "\nno unconstrained throughput to compare with")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out if len(runs) > 1 else out[next(iter(out))], indent=1))
    print(f"wrote {args.out}")
    plot(runs[list(runs)[-1]][0], args.plot)
    return summary


class StateWatcher:
    """During a run: a thread reading jaxserve's state feed, as an open dashboard would
    (stream=True: one SSE connection, 1 s apart) or keeping frames for a replay export."""

    MAX_FRAMES = 300     # a longer run keeps every other frame, then every fourth, ...

    def __init__(self, base_url: str, headers: dict, stream: bool, interval_s: float = 1.0):
        self.base_url, self.headers, self.stream, self.interval_s = base_url, headers, stream, interval_s
        self.frames: list[dict] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "StateWatcher":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)

    def _loop(self) -> None:
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=30) as client:
            if self.stream:
                with client.stream("GET", "/debug/state/stream", params={"interval": self.interval_s}) as r:
                    for _ in r.iter_lines():
                        if self.stop.is_set():
                            return
                return
            while True:
                stopped = self.stop.wait(self.interval_s if self.frames else 0.0)
                self.frames.append(client.get("/debug/state").raise_for_status().json())
                if len(self.frames) > self.MAX_FRAMES:
                    self.frames = self.frames[::2]
                if stopped:          # the last frame is the state at the run's end
                    return


def _run(args: argparse.Namespace, model: str, prompts, schemas=None, lengths=None) -> tuple[list[Result], dict]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    watchers = []
    if args.dashboard_reader:
        watchers.append(StateWatcher(args.base_url, headers, stream=True))
    if args.record_dashboard:
        watchers.append(StateWatcher(args.base_url, headers, stream=False, interval_s=args.record_interval))
    with httpx.Client(base_url=args.base_url, headers=headers, timeout=60) as client, \
            contextlib.ExitStack() as watching:
        for w in watchers:
            watching.enter_context(w)
        before = read_mask_counters(client)
        results, duration_s = asyncio.run(run_load(args, model, prompts, schemas, lengths))
        after = read_mask_counters(client)
    if args.record_dashboard:
        from jaxserve.server.dashboard import dashboard_page
        frames = watchers[-1].frames
        args.record_dashboard.parent.mkdir(parents=True, exist_ok=True)
        args.record_dashboard.write_text(dashboard_page(recorded=frames))
        print(f"wrote {args.record_dashboard} ({len(frames)} dashboard frames)")
    summary = summarize(args, model, results, duration_s)
    summary["grammar_mask"] = mask_time(before, after, duration_s)
    return results, summary


if __name__ == "__main__":
    main()
