"""`jaxserve serve|generate`: flags -> config -> engine -> app (or one-off generation).

    jaxserve serve --config configs/smollm2-135m.yaml --port 8000 --max-num-seqs 16
    jaxserve generate --config configs/smollm2-135m.yaml --max-tokens 32 "Once upon a time"

Flags override the YAML file, which overrides the defaults in config.py; `--set key=value`
reaches any config field by its dotted name (`--set cache.num_pages=1024`). Both commands turn
on the engine's executable store ($JAXSERVE_CACHE/executables, by default
~/.cache/jaxserve/executables), so a restart compiles nothing.
`serve` loads the model, starts HTTP at once (/health answers 503 while warming up), builds the
programs a first request needs, then answers ready and logs the URL while the rest build in the
background (server.warmup_in_background: false waits for all); SIGTERM stops new requests, drains those in flight, then exits.
If the engine thread dies, every request in flight fails and `serve` exits with status 1.

Disaggregated over processes (jaxserve/disagg/router.py tells the life of a request):

    jaxserve serve --config C --role prefill --port 8101
    jaxserve serve --config C --role decode --port 8201
    jaxserve serve --config C --role router --port 8000 \
        --prefill-url http://127.0.0.1:8101 --decode-url http://127.0.0.1:8201
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any

import yaml

from jaxserve.config import EngineConfig, load_config, overrides_from_dotted
from jaxserve.model.source import cache_dir

logger = logging.getLogger("jaxserve")

# flag -> dotted config key; None values (flag not given) leave the YAML value alone.
_FLAG_KEYS = {
    "model": "model.source",
    "served_model_name": "model.served_model_name",
    "dtype": "model.dtype",
    "matmul_dtype": "model.matmul_dtype",
    "kv_cache_dtype": "cache.dtype",
    "max_model_len": "model.max_model_len",
    "page_size": "cache.page_size",
    "num_pages": "cache.num_pages",
    "max_num_seqs": "scheduler.max_num_seqs",
    "max_num_batched_tokens": "scheduler.max_num_batched_tokens",
    "max_waiting": "scheduler.max_waiting",
    "attention_impl": "kernel.attention_impl",
    "host": "server.host",
    "port": "server.port",
    "api_key": "server.api_key",
    "seed": "seed",
}


def build_config(args: argparse.Namespace) -> EngineConfig:
    """YAML file (if any) + `--set` pairs + named flags, in increasing priority."""
    dotted: dict[str, Any] = {}
    for pair in args.set or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        dotted[key] = yaml.safe_load(value)
    for flag, key in _FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None:
            dotted[key] = value
    if getattr(args, "no_warmup", False):
        dotted["server.warmup"] = False
    try:
        config = load_config(args.config, overrides_from_dotted(dotted))
    except ValueError as e:
        raise SystemExit(f"config error: {e}") from None
    request_host_devices(config)
    return config


def request_host_devices(config: EngineConfig) -> None:
    """Disaggregated meshes on CPU need that many host devices; XLA reads the flag when JAX starts.

    Has no effect on GPU/TPU devices, and none if the user already chose a count.
    """
    if config.disagg.mode != "disaggregated":
        return
    count = max(config.disagg.prefill_devices + config.disagg.decode_devices) + 1
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def enable_compilation_cache() -> None:
    """Keep the engine's compiled step programs on disk so the next start loads them, as whole
    executables (cache_dir()/executables, see executable_store.py).

    JAX's own persistent cache is left off: every program it supplies is one the store cannot
    keep (an XLA:CPU executable loaded from it serializes without its code), and reading its
    entries aborted the test process twice in one session (a native crash in
    compilation_cache.get_executable_and_time).
    """
    from jaxserve import executable_store

    executable_store.enable(cache_dir() / "executables")


def _config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (configs/*.yaml)")
    p.add_argument("--model", help="model.source: a known name, a .gguf file or a safetensors dir")
    p.add_argument("--dtype", choices=["float32", "bfloat16"])
    p.add_argument("--matmul-dtype", choices=["float32", "bfloat16"], help="model.matmul_dtype")
    p.add_argument("--kv-cache-dtype", choices=["auto", "float32", "bfloat16"], help="cache.dtype")
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--page-size", type=int)
    p.add_argument("--num-pages", type=int)
    p.add_argument("--max-num-seqs", type=int)
    p.add_argument("--max-num-batched-tokens", type=int)
    p.add_argument("--attention-impl", choices=["auto", "reference", "xla", "triton", "mosaic"])
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config field, e.g. cache.num_pages=1024")
    p.add_argument("--no-compile-cache", action="store_true", help="do not use the persistent XLA cache")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxserve", description="LLM serving engine on JAX")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the OpenAI-compatible HTTP server")
    _config_flags(serve)
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--api-key", help="require `Authorization: Bearer KEY` (or set JAXSERVE_API_KEY)")
    serve.add_argument("--served-model-name")
    serve.add_argument("--max-waiting", type=int, help="queued requests before answering 429")
    serve.add_argument("--no-warmup", action="store_true", help="report ready before compiling the buckets")
    serve.add_argument("--drain-timeout", type=float, default=60.0,
                       help="seconds SIGTERM waits for requests in flight")
    serve.add_argument("--role", choices=["single", "prefill", "decode", "router"], default="single",
                       help="single: the whole engine in this process (default); prefill/decode: one "
                            "side of disaggregated serving; router: the OpenAI API over those workers")
    serve.add_argument("--prefill-url", action="append", default=[], metavar="URL",
                       help="router: a prefill worker's base URL (repeat for several)")
    serve.add_argument("--decode-url", action="append", default=[], metavar="URL",
                       help="router: a decode worker's base URL (repeat for several)")
    serve.add_argument("--kv-ticket-timeout", type=float, default=30.0,
                       help="prefill: seconds staged KV pages wait to be pulled; decode: longest pull")

    gen = sub.add_parser("generate", help="generate from prompts given on the command line")
    _config_flags(gen)
    gen.add_argument("prompts", nargs="+")
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--sample-seed", type=int, help="per-request sampling seed")
    gen.add_argument("--chat", action="store_true", help="wrap each prompt in the chat template as a user turn")
    gen.add_argument("--no-stream", action="store_true", help="print whole results instead of streaming")
    return parser


def serve(args: argparse.Namespace, start_time_s: float) -> None:
    from jaxserve.server.http_server import ServingServer, uvicorn_config

    config = build_config(args)
    if args.role == "router":
        async_engine, app = _router_app(args, config, start_time_s)
    else:
        if not args.no_compile_cache:
            enable_compilation_cache()
        async_engine, app = _engine_app(args, config, start_time_s)
    if args.role != "single":   # the router polls /load twice a second: keep that out of the log
        logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    server = ServingServer(async_engine, uvicorn_config(
        app, config.server, log_level=args.log_level, access_log=args.role in ("single", "router"),
        timeout_graceful_shutdown=int(args.drain_timeout)))
    server.run()
    if server.engine_failed:
        logger.error("exiting with status 1: the engine failed (%r)", async_engine.error)
        raise SystemExit(1)


def _engine_app(args: argparse.Namespace, config: EngineConfig, start_time_s: float) -> tuple[Any, Any]:
    """The whole engine (role single), or one side of disaggregated serving (prefill, decode)."""
    from jaxserve.async_engine import AsyncEngine
    from jaxserve.engine import Engine
    from jaxserve.engine_factory import make_engine

    t0 = time.monotonic()
    if args.role == "single":
        from jaxserve.server import create_app

        engine = make_engine(config)
        logger.info("loaded %s in %.1f s", engine.model_name, time.monotonic() - t0)
        async_engine = AsyncEngine(engine)
        return async_engine, create_app(async_engine, config, start_time_s=start_time_s)

    from jaxserve.loading import load_model

    arch, params, tokenizer, name = load_model(config)
    engine = Engine(config, arch, params, tokenizer, name)   # a worker is one Engine, colocated
    logger.info("loaded %s in %.1f s (%s worker)", name, time.monotonic() - t0, args.role)
    host, port = config.server.host, config.server.port
    if args.role == "prefill":
        from jaxserve.disagg.prefill_worker import PrefillWorker, create_prefill_app
        from jaxserve.disagg.remote_transfer import KVStager

        stager = KVStager(host, args.kv_ticket_timeout, release_url=f"http://{host}:{port}/release")
        worker = PrefillWorker(engine, stager)
        async_engine = AsyncEngine(worker)
        return async_engine, create_prefill_app(async_engine, worker, config.server.warmup)
    from jaxserve.disagg.decode_worker import DecodeWorker, create_decode_app
    from jaxserve.disagg.remote_transfer import KVPuller

    worker = DecodeWorker(engine, KVPuller(engine.runner.kv.k.sharding, host))
    async_engine = AsyncEngine(worker)
    return async_engine, create_decode_app(async_engine, worker, config.server.warmup,
                                           pull_timeout_s=args.kv_ticket_timeout)


def router_worker_urls(args: argparse.Namespace, config: EngineConfig) -> tuple[list[str], list[str]]:
    """The router's workers: --prefill-url/--decode-url flags if given, else disagg.*_urls."""
    prefill = list(args.prefill_url or config.disagg.prefill_urls)
    decode = list(args.decode_url or config.disagg.decode_urls)
    if not prefill or not decode:
        raise SystemExit("--role router needs at least one prefill and one decode worker: "
                         "--prefill-url/--decode-url, or disagg.prefill_urls/decode_urls in the config")
    return prefill, decode


def _router_app(args: argparse.Namespace, config: EngineConfig, start_time_s: float) -> tuple[Any, Any]:
    from jaxserve.disagg.router import Router, create_router_app, load_tokenizer

    prefill_urls, decode_urls = router_worker_urls(args, config)
    tokenizer, name = load_tokenizer(config)
    router = Router(config, tokenizer, name, prefill_urls, decode_urls)
    return router, create_router_app(router, config, start_time_s=start_time_s)


def generate(args: argparse.Namespace) -> None:
    from jaxserve.sampling_params import SamplingParams

    config = build_config(args)
    if not args.no_compile_cache:
        enable_compilation_cache()
    from jaxserve.llm import LLM

    llm = LLM(config)
    try:
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                                top_k=args.top_k, seed=args.sample_seed)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    prompts = args.prompts
    if args.chat:
        prompts = [llm.tokenizer.apply_chat_template([{"role": "user", "content": p}]) for p in prompts]
    if args.no_stream:
        for out in llm.generate(prompts, params, use_tqdm=False):
            print(out.text)
        return
    for prompt in prompts:
        for piece in llm.stream(prompt, params):
            print(piece, end="", flush=True)
        print()


def main(argv: list[str] | None = None) -> None:
    start_time_s = time.monotonic()
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        serve(args, start_time_s)
    else:
        generate(args)


if __name__ == "__main__":
    main()
