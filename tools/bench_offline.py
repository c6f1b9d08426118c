"""Offline throughput: N prompts submitted at once to LLM.generate, beside Hugging Face if asked.

    python tools/bench_offline.py --config configs/smollm2-135m.yaml --num-prompts 32 \
        --prompt-len 512 --output-len 128 --concurrency 32 --warmup --peer transformers \
        --json bench.json

Workload: N prompts of exactly --prompt-len tokens, cut from real English text (the stdlib's
docstrings, tools/_text_corpus.py) at different offsets so no two share a KV page and the prefix
cache cannot help (its hit count is printed to show it); greedy, exactly --output-len new tokens
each (ignore_eos). All N arrive at t=0; at most --concurrency run at once (scheduler.max_num_seqs).

Figures, defined the same way for every engine:
  prompt | output | total tok/s   tokens of the whole run over its wall time
  TTFT p50/p90/p99                first token - arrival at t=0, so it includes queueing
  ITL p50/p90/p99                 gaps between successive tokens of one request, all pooled
jaxserve also reports compiles (in the timed run and in all), prefix-cache and preemption
counters, KV pool size, and where the wall time went per compiled step shape.

--peer transformers runs the same token ids through `AutoModelForCausalLM.generate` on the same
GGUF (float32, greedy, left padding) in a child process, so its memory and threads are its own.
It batches statically: --concurrency prompts per `generate`, batches one after another. Its TTFT
is approximated by a separate max_new_tokens=1 run of each batch, plus the full runs of the
batches queued before it; its ITL comes from a streamer's timestamps in the full run.

Engine options reach the engine only through `engine_overrides`, so a new feature's flag (e.g.
speculative decoding) is one more entry there.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))   # tools/ holds scripts, not a package
from _machine import cpu_model  # noqa: E402
from _text_corpus import fingerprint, stdlib_docstrings, token_windows  # noqa: E402

PERCENTILES = (50, 90, 99)


# ------------------------------------------------------------------------------------ figures
def percentiles_ms(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {f"p{p}": None for p in PERCENTILES}
    values = np.percentile(np.asarray(seconds) * 1e3, PERCENTILES)
    return {f"p{p}": float(v) for p, v in zip(PERCENTILES, values)}


def summarize(prompt_lens: list[int], output_lens: list[int], wall_s: float,
              ttft_s: list[float], itl_s: list[float]) -> dict:
    """The figures every engine reports, from per-request lengths and timings."""
    prompt, output = sum(prompt_lens), sum(output_lens)
    return {
        "num_requests": len(prompt_lens), "prompt_tokens": prompt, "output_tokens": output,
        "wall_s": wall_s, "prompt_tok_s": prompt / wall_s, "output_tok_s": output / wall_s,
        "total_tok_s": (prompt + output) / wall_s,
        "ttft_ms": percentiles_ms(ttft_s), "itl_ms": percentiles_ms(itl_s),
    }


def peak_rss_mib() -> float:
    """This process's peak resident memory.

    Linux keeps ru_maxrss across fork and exec, so a spawned child (the peer) would report its
    parent's peak; VmHWM belongs to the address space and starts afresh. Same figure otherwise.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024   # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


class Contention:
    """How much of the machine a timed section got: this process's CPU seconds per wall second
    (all threads; ~cores when alone) and the 1-minute load average, sampled every 5 s."""

    def __enter__(self) -> "Contention":
        self._stop = threading.Event()
        self._loads = [os.getloadavg()[0]]
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._cpu0, self._t0 = self._cpu_s(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        self.figures = {"cpu_s_per_wall_s": (self._cpu_s() - self._cpu0) / wall,
                        "load_avg_1m_mean": float(np.mean(self._loads)),
                        "load_avg_1m_max": float(np.max(self._loads))}

    def _sample(self) -> None:
        while not self._stop.wait(5.0):
            self._loads.append(os.getloadavg()[0])

    @staticmethod
    def _cpu_s() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime


def hardware() -> dict:
    cpu = cpu_model()
    import jax
    import jaxlib
    return {
        "cpu_model": cpu, "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
        "mem_total_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "load_avg_1m_at_start": os.getloadavg()[0], "python": platform.python_version(),
        "jax": jax.__version__, "jaxlib": jaxlib.__version__, "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.local_devices()],
    }


def code_state() -> dict:
    """The commit measured, and engine files that differ from it (others may be mid-change)."""
    repo = Path(__file__).resolve().parents[1]
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True).stdout
    try:
        dirty = git("status", "--porcelain", "--", "jaxserve", "pallas_kernels", "configs").splitlines()
        return {"commit": git("rev-parse", "HEAD").strip(), "uncommitted": [l[3:] for l in dirty]}
    except OSError:
        return {"commit": None, "uncommitted": None}


# ----------------------------------------------------------------------------------- workload
def engine_overrides(args) -> dict:
    """Dotted config keys for the engine under test: --concurrency, then each --set."""
    overrides = {"scheduler.max_num_seqs": args.concurrency}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set wants KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def make_prompts(tokenizer, num: int, length: int, page_size: int) -> tuple[list[list[int]], dict]:
    text = stdlib_docstrings()
    ids = tokenizer.encode(text)
    prompts = token_windows(ids, num, length, page_size)
    corpus = {"source": "docstrings of Python stdlib modules (tools/_text_corpus.py)",
              "chars": len(text), "tokens": len(ids), "sha256_12": fingerprint(text)}
    return prompts, corpus


class StepTimer:
    """Times each model step by its compiled shape (ModelBatch.describe), wrapping one
    ModelRunner's step methods on the instance for the duration of a `with` block.

    An engine step is timed from its dispatch (runner.launch) to the end of its read-back
    (LaunchedStep.fetch); with asynchronous scheduling the next step is planned and dispatched
    in between, so these spans overlap. Also kept: the host's wait inside fetch (the device
    still busy) and the gaps between successive dispatches. One step at a time, device time
    is about the wait, and the rest of a dispatch gap is the host's (its share of the step).
    """

    def __init__(self, runner):
        self.runner = runner
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.waits: list[float] = []
        self.launches: list[float] = []
        self._wrapped = ["launch", "run"]   # engine steps; a draft model's own decode steps

    def __enter__(self) -> "StepTimer":
        for name in self._wrapped:
            wrap = self._launch if name == "launch" else self._run
            setattr(self.runner, name, wrap(getattr(self.runner, name)))
        return self

    def __exit__(self, *exc) -> None:
        for name in self._wrapped:
            delattr(self.runner, name)   # back to the class's method

    def _launch(self, method):
        def launch(inputs, *rest):
            t0 = time.perf_counter()
            self.launches.append(t0)
            launched = method(inputs, *rest)
            fetch, key = launched.fetch, f"step {inputs.batch.describe()}"

            def timed_fetch():
                t1 = time.perf_counter()
                result = fetch()
                t2 = time.perf_counter()
                self.waits.append(t2 - t1)
                self.seconds[key].append(t2 - t0)
                return result
            launched.fetch = timed_fetch
            return launched
        return launch

    def _run(self, method):
        def run(batch, *rest):
            t0 = time.perf_counter()
            result = method(batch, *rest)
            self.seconds[f"run {batch.describe()}"].append(time.perf_counter() - t0)
            return result
        return run

    def figures(self) -> dict:
        gaps = np.diff(self.launches) if len(self.launches) > 1 else np.zeros(0)
        return {"steps": len(self.launches),
                "dispatch_gap_ms_mean": float(1e3 * gaps.mean()) if len(gaps) else None,
                "fetch_wait_ms_mean": float(1e3 * np.mean(self.waits)) if self.waits else None}

    def table(self) -> list[dict]:
        rows = [{"shape": k, "steps": len(v), "total_s": sum(v), "mean_ms": 1e3 * sum(v) / len(v)}
                for k, v in self.seconds.items()]
        return sorted(rows, key=lambda r: -r["total_s"])


# ----------------------------------------------------------------------------------- jaxserve
def run_jaxserve(args) -> tuple[dict, list[list[int]], dict, str]:
    """Load, warm up, run the timed generate. Returns (figures, prompts, corpus, model path)."""
    import jax

    from jaxserve import LLM, SamplingParams
    from jaxserve.config import load_config, overrides_from_dotted
    from jaxserve.loading import TINY_RANDOM
    from jaxserve.model.source import resolve_model_source

    dotted = engine_overrides(args)
    config = load_config(args.config, overrides_from_dotted(dotted))
    t0 = time.perf_counter()
    llm = LLM(config)
    load_s = time.perf_counter() - t0
    engine = llm.engine
    num_warm = min(2, args.concurrency, args.num_prompts) if args.warmup else 0
    prompts, corpus = make_prompts(llm.tokenizer, num_warm + args.num_prompts, args.prompt_len,
                                   config.cache.page_size)
    warm_prompts, prompts = prompts[:num_warm], prompts[num_warm:]

    warmup_s = {"buckets": 0.0, "generate": 0.0}
    if args.warmup:
        t0 = time.perf_counter()
        engine.warmup()
        warmup_s["buckets"] = time.perf_counter() - t0
        # Two prompts of the real length compile any prefill/decode shape engine.warmup()
        # missed at the real block-table width; what still compiles in the timed run is listed.
        t0 = time.perf_counter()
        llm.generate(warm_prompts, SamplingParams(temperature=0, max_tokens=2, ignore_eos=True),
                     use_tqdm=False)
        warmup_s["generate"] = time.perf_counter() - t0
        print(f"warmup: {warmup_s['buckets']:.1f} s engine.warmup(), {warmup_s['generate']:.1f} s "
              f"generate; {engine.stats().program_count} programs built", flush=True)

    params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    before = engine.stats()
    with StepTimer(engine.runner) as steps, Contention() as contention:
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        wall_s = time.perf_counter() - t0
    after = engine.stats()

    figures = summarize([len(p) for p in prompts], [len(o.token_ids) for o in outs], wall_s,
                        [o.ttft_s for o in outs], [gap for o in outs for gap in o.itl_s])
    device = jax.local_devices()[0]
    kv = engine.runner.kv
    figures.update({
        **contention.figures, "load_s": load_s, "warmup_s": warmup_s,
        "compiles_timed": after.program_count - before.program_count,
        "compile_s_timed": after.compile_time_s - before.compile_time_s,
        "compiles_total": after.program_count,
        "compiled_in_timed_run": engine.runner.compiles.keys[before.program_count:],
        "prefix_cache_queries_timed": after.prefix_cache_queries - before.prefix_cache_queries,
        "prefix_cache_hits_timed": after.prefix_cache_hits - before.prefix_cache_hits,
        "preemptions_timed": after.num_preemptions - before.num_preemptions,
        "spec_proposed_timed": after.spec_proposed_tokens - before.spec_proposed_tokens,
        "spec_accepted_timed": after.spec_accepted_tokens - before.spec_accepted_tokens,
        "kv_pool_mib": (kv.k.nbytes + kv.v.nbytes) / 2**20,
        "cache_num_pages": config.cache.num_pages,
        "peak_host_rss_mib": peak_rss_mib(),
        "device_memory": device.memory_stats(),   # None where the backend keeps none (CPU)
        "step_time_s": sum(sum(v) for v in steps.seconds.values()),
        "steps_by_shape": steps.table(),
        "step_pipeline": steps.figures(),
        "overrides": dotted,
        "output_token_ids": [o.token_ids for o in outs],
    })
    # The tiny random model is built in memory: no file to name (or give a peer).
    model_path = (config.model.source if config.model.source == TINY_RANDOM
                  else str(resolve_model_source(config.model.source)))
    return figures, prompts, corpus, model_path


# ------------------------------------------------------------------------------- transformers
def run_transformers(model_path: str, prompts: list[list[int]], output_len: int, batch_size: int,
                     warmup: bool) -> dict:
    """The same workload on Hugging Face transformers; runs in a child process."""
    import torch
    import transformers
    from transformers.generation.streamers import BaseStreamer

    class TokenClock(BaseStreamer):
        """Timestamps each decoding step: put() gets the prompt once, then one token per row."""

        def __init__(self):
            self.times: list[float] = []
            self.seen_prompt = False

        def put(self, value):
            if self.seen_prompt:
                self.times.append(time.perf_counter())
            self.seen_prompt = True

        def end(self):
            pass

    path = Path(model_path)
    t0 = time.perf_counter()
    if path.suffix == ".gguf":
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model.eval()
    load_s = time.perf_counter() - t0
    pad_id = model.generation_config.pad_token_id
    if pad_id is None:   # no padding happens (prompts are equally long), but generate wants one
        eos = model.generation_config.eos_token_id
        pad_id = eos[0] if isinstance(eos, list) else eos

    def left_padded(batch: list[list[int]]):
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, p in enumerate(batch):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        return ids, mask

    def generate(batch, new_tokens: int, streamer=None):
        ids, mask = left_padded(batch)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 pad_token_id=pad_id, streamer=streamer)
        return out[:, ids.shape[1]:].tolist()

    if warmup:
        generate([prompts[0][:16]], 2)

    batches = [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]
    ttft_s, itl_s, outputs, per_batch = [], [], [], []
    queued_s = 0.0   # full runs of earlier batches: every request arrived at t=0
    with Contention() as contention:   # covers the max_new_tokens=1 runs too
        for batch in batches:
            t0 = time.perf_counter()
            generate(batch, 1)
            prefill_s = time.perf_counter() - t0
            clock = TokenClock()
            t0 = time.perf_counter()
            outputs += generate(batch, output_len, clock)
            full_s = time.perf_counter() - t0
            ttft_s += [queued_s + prefill_s] * len(batch)
            gaps = list(np.diff(clock.times))
            itl_s += gaps * len(batch)
            per_batch.append({"size": len(batch), "max_new_tokens_1_s": prefill_s, "full_s": full_s,
                              "first_token_in_full_run_s": clock.times[0] - t0 if clock.times else None})
            queued_s += full_s

    figures = summarize([len(p) for p in prompts], [len(o) for o in outputs], queued_s, ttft_s, itl_s)
    figures.update({
        **contention.figures, "load_s": load_s, "batches": per_batch,
        "peak_host_rss_mib": peak_rss_mib(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(), "output_token_ids": outputs,
    })
    return figures


def run_peer_in_child(*args) -> dict:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(run_transformers, *args).result()


# ------------------------------------------------------------------------------------- report
def print_report(results: dict, hw: dict, workload: dict) -> None:
    names = list(results)
    rows = [
        ("requests", lambda r: f"{r['num_requests']}"),
        ("prompt tok/s", lambda r: f"{r['prompt_tok_s']:.1f}"),
        ("output tok/s", lambda r: f"{r['output_tok_s']:.1f}"),
        ("total tok/s", lambda r: f"{r['total_tok_s']:.1f}"),
        ("wall s", lambda r: f"{r['wall_s']:.1f}"),
    ]
    for metric in ("ttft_ms", "itl_ms"):
        for p in PERCENTILES:
            rows.append((f"{metric[:-3].upper()} p{p} ms",
                         lambda r, m=metric, p=p: "-" if r[m][f"p{p}"] is None else f"{r[m][f'p{p}']:.1f}"))
    rows += [("peak host RSS MiB", lambda r: f"{r['peak_host_rss_mib']:.0f}"),
             ("CPU s per wall s", lambda r: f"{r['cpu_s_per_wall_s']:.2f}"),
             ("load avg (mean)", lambda r: f"{r['load_avg_1m_mean']:.1f}")]
    width = max(len(r[0]) for r in rows) + 2
    print(f"\nworkload: {workload['num_prompts']} prompts x {workload['prompt_len']} tokens -> "
          f"{workload['output_len']} tokens, concurrency {workload['concurrency']}, greedy")
    print(f"hardware: {hw['cpu_model']}, {hw['cpus_usable']}/{hw['cpu_count']} CPUs, "
          f"{hw['mem_total_gib']:.0f} GiB, load {hw['load_avg_1m_at_start']:.1f}; jax {hw['jax']} "
          f"({hw['backend']}), Python {hw['python']}")
    print("".ljust(width) + "".join(n.rjust(14) for n in names))
    for label, fmt in rows:
        print(label.ljust(width) + "".join(fmt(results[n]).rjust(14) for n in names))
    j = results["jaxserve"]
    print(f"\njaxserve: compiles {j['compiles_timed']} in the timed run ({j['compile_s_timed']:.1f} s of "
          f"steps that compiled), {j['compiles_total']} in all; prefix cache hits "
          f"{j['prefix_cache_hits_timed']}/{j['prefix_cache_queries_timed']} pages; preemptions "
          f"{j['preemptions_timed']}; KV pools {j['kv_pool_mib']:.0f} MiB "
          f"({j['cache_num_pages']} pages); device memory stats: {j['device_memory'] or 'n/a'}")
    if j["compiled_in_timed_run"]:
        print("jaxserve compiled in the timed run: " + "; ".join(j["compiled_in_timed_run"]))
    sp = j["step_pipeline"]
    if sp["dispatch_gap_ms_mean"] is not None:
        print(f"jaxserve steps: {sp['steps']}, dispatch to dispatch {sp['dispatch_gap_ms_mean']:.1f} ms "
              f"mean, host waiting for the device {sp['fetch_wait_ms_mean']:.1f} ms of it")
    print(f"jaxserve dispatch-to-read-back time in model steps {j['step_time_s']:.1f} s of "
          f"{j['wall_s']:.1f} s wall (overlapping spans with async scheduling):")
    for row in j["steps_by_shape"][:8]:
        print(f"  {row['shape']:<32} {row['steps']:>5} steps {row['total_s']:>8.1f} s "
              f"{row['mean_ms']:>9.1f} ms/step")
    if "transformers" in results:
        t = results["transformers"]
        print(f"transformers {t['transformers']} (torch {t['torch']}, {t['torch_threads']} threads): "
              f"{t['same_tokens_as_jaxserve']}/{t['num_requests']} requests gave the same greedy "
              f"tokens as jaxserve")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/smollm2-135m.yaml")
    ap.add_argument("--num-prompts", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=32,
                    help="requests run at once (scheduler.max_num_seqs); all are submitted at t=0")
    ap.add_argument("--warmup", action="store_true",
                    help="run engine.warmup() and a short untimed generate before timing")
    ap.add_argument("--peer", choices=["transformers"], help="also run the workload on this engine")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="engine config override, dotted key and YAML value, e.g. cache.num_pages=64")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args(argv)
    for name in ("num_prompts", "prompt_len", "output_len", "concurrency"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    hw, code = hardware(), code_state()   # before the run: others may commit meanwhile
    workload = {k: getattr(args, k) for k in ("num_prompts", "prompt_len", "output_len", "concurrency")}
    print(f"jaxserve: {workload}", flush=True)
    results = {}
    results["jaxserve"], prompts, corpus, model_path = run_jaxserve(args)
    workload["corpus"] = corpus
    if args.peer == "transformers":
        print("transformers: same prompts", flush=True)
        peer = run_peer_in_child(model_path, prompts, args.output_len, args.concurrency, args.warmup)
        # A check that both ran the same workload: float32 greedy should agree token for token.
        peer["same_tokens_as_jaxserve"] = sum(
            a == b for a, b in zip(results["jaxserve"]["output_token_ids"], peer["output_token_ids"]))
        results["transformers"] = peer
    for figures in results.values():
        del figures["output_token_ids"]   # compared above; too bulky for the report
    hw["load_avg_1m_at_end"] = os.getloadavg()[0]
    print_report(results, hw, workload)
    report = {"command": " ".join([Path(sys.executable).name] + sys.argv), "workload": workload,
              "hardware": hw, "code": code, "model": model_path, "engines": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
