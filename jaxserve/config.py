"""Configuration: one frozen dataclass per stage, composed into EngineConfig.

Defaults live here; YAML files in configs/ override them; command-line flags override YAML.
Unknown keys and bad values raise ValueError naming the key (e.g. "scheduler.max_num_seqs").
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    source: str = "smollm2-135m-instruct-q4_1"  # a known name, a .gguf file or a safetensors directory
    dtype: str = "float32"                       # parameter and activation dtype: float32 | bfloat16
    # The projections (q/k/v/o, MLP, LM head): float32, or bfloat16 inputs with f32 accumulation
    # while activations, norms, attention and the KV cache keep `dtype` (about 2x faster GEMMs
    # on CPUs with AVX512-BF16; weights rounded to bf16, as llama.cpp rounds activations to 8 bits).
    matmul_dtype: str = "float32"
    max_model_len: int = 2048                    # longest prompt + output accepted; bounds block tables
    checkpoint_dir: str | None = None            # orbax cache of converted params; None: $JAXSERVE_CACHE/params
    served_model_name: str | None = None         # name shown by /v1/models; None: derived from source

    def validate(self) -> None:
        _check(self.dtype in ("float32", "bfloat16"), "model.dtype", "must be float32 or bfloat16", self.dtype)
        _check(self.matmul_dtype in ("float32", "bfloat16"), "model.matmul_dtype",
               "must be float32 or bfloat16", self.matmul_dtype)
        _check(self.max_model_len > 0, "model.max_model_len", "must be > 0", self.max_model_len)


@dataclass(frozen=True, kw_only=True)
class CacheConfig:
    page_size: int = 16             # tokens per KV page; a power of two
    num_pages: int = 2048           # pages in each pool (page 0 is reserved for padding writes)
    enable_prefix_caching: bool = True  # share full prompt pages between requests by content hash
    dtype: str = "auto"             # K/V values: auto (model.dtype) | float32 | bfloat16 (half the bytes per step)

    def validate(self) -> None:
        ps = self.page_size
        _check(ps > 0 and ps & (ps - 1) == 0, "cache.page_size", "must be a power of two", ps)
        _check(self.num_pages >= 2, "cache.num_pages", "must be >= 2", self.num_pages)
        _check(self.dtype in ("auto", "float32", "bfloat16"), "cache.dtype",
               "must be auto, float32 or bfloat16", self.dtype)


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    max_num_seqs: int = 32                 # sequences decoding at once
    max_num_batched_tokens: int = 512      # token budget of a step's decodes (with drafts), and of its prefill chunks
    max_waiting: int = 1024                # queue length past which new requests are refused (HTTP 429)
    max_prefill_seqs: int = 2              # sequences sharing one prefill step (each gets a full query window)
    decode_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32)   # padded decode batch sizes
    prefill_buckets: tuple[int, ...] = (16, 32, 64, 128, 256, 512)  # padded prefill token counts
    # Dispatch step N+1 before reading step N's tokens back, so the host's scheduling, packing,
    # detokenizing and streaming overlap the device (engine.py, inflight.py); false: one step at a time.
    async_scheduling: bool = True

    def validate(self) -> None:
        _check(self.max_num_seqs > 0, "scheduler.max_num_seqs", "must be > 0", self.max_num_seqs)
        _check(self.max_num_batched_tokens > 0, "scheduler.max_num_batched_tokens", "must be > 0",
               self.max_num_batched_tokens)
        _check(self.max_waiting > 0, "scheduler.max_waiting", "must be > 0", self.max_waiting)
        _check(self.max_prefill_seqs > 0, "scheduler.max_prefill_seqs", "must be > 0", self.max_prefill_seqs)
        _check(list(self.decode_buckets) == sorted(set(self.decode_buckets)) and self.decode_buckets[0] > 0,
               "scheduler.decode_buckets", "must be increasing positive integers", self.decode_buckets)
        _check(self.decode_buckets[-1] >= self.max_num_seqs, "scheduler.decode_buckets",
               f"largest must be >= max_num_seqs ({self.max_num_seqs})", self.decode_buckets)
        _check(list(self.prefill_buckets) == sorted(set(self.prefill_buckets)) and self.prefill_buckets[0] > 0,
               "scheduler.prefill_buckets", "must be increasing positive integers", self.prefill_buckets)
        _check(self.prefill_buckets[-1] >= self.max_num_batched_tokens, "scheduler.prefill_buckets",
               f"largest must be >= max_num_batched_tokens ({self.max_num_batched_tokens})",
               self.prefill_buckets)


@dataclass(frozen=True, kw_only=True)
class KernelConfig:
    attention_impl: str = "auto"   # auto (by backend) | reference | xla | triton | mosaic
    interpret: bool = False        # run Pallas kernels in interpret mode (CPU tests)

    def validate(self) -> None:
        _check(self.attention_impl in ("auto", "reference", "xla", "triton", "mosaic"), "kernel.attention_impl",
               "must be auto, reference, xla, triton or mosaic", self.attention_impl)


@dataclass(frozen=True, kw_only=True)
class SpeculativeConfig:
    method: str = "none"            # none | ngram (prompt lookup) | draft (a smaller model)
    # k: most tokens proposed per step. A verify pass gives each sequence 1 + k query slots rounded
    # up to a power of two, so k = 7 costs what k = 4 does (measured on CPU, n-gram, copy workload:
    # 1.82x at k = 7, 1.55x at k = 4, 1.41x at k = 15).
    num_speculative_tokens: int = 7
    ngram_max: int = 4              # longest suffix n-gram looked up in the request's own tokens
    ngram_min: int = 2              # shortest one worth trusting
    draft_source: str | None = None  # method=draft: model.source of the draft (same tokenizer)
    draft_dtype: str = "float32"
    # Speculation pays only while verifying 1 + k tokens costs little more than decoding one. On
    # a CPU the model is compute-bound, so a verify pass over a larger batch costs several decode
    # steps (docs/benchmarks.md: 0.47x-0.88x at 8 sequences, ~1.4x at 1). Two gates, every step:
    # more decoding sequences than max_batch_for_speculation -> a plain decode step for all; a
    # moving average of draft tokens accepted per verified sequence below min_accepted_tokens ->
    # only every 8th decode step proposes, to re-measure (0: speculate whatever the acceptance).
    max_batch_for_speculation: int = 4
    min_accepted_tokens: float = 0.5

    def validate(self) -> None:
        _check(self.method in ("none", "ngram", "draft"), "speculative.method", "must be none, ngram or draft",
               self.method)
        _check(1 <= self.num_speculative_tokens <= 16, "speculative.num_speculative_tokens",
               "must be in 1..16", self.num_speculative_tokens)
        _check(self.max_batch_for_speculation >= 1, "speculative.max_batch_for_speculation", "must be >= 1",
               self.max_batch_for_speculation)
        _check(0.0 <= self.min_accepted_tokens <= self.num_speculative_tokens, "speculative.min_accepted_tokens",
               "must be in 0..num_speculative_tokens", self.min_accepted_tokens)
        _check(1 <= self.ngram_min <= self.ngram_max, "speculative.ngram_min",
               "must be in 1..ngram_max", self.ngram_min)
        _check(self.method != "draft" or bool(self.draft_source), "speculative.draft_source",
               "must be set when method is draft", self.draft_source)


@dataclass(frozen=True, kw_only=True)
class DisaggConfig:
    mode: str = "colocated"               # colocated | disaggregated
    prefill_devices: tuple[int, ...] = (0,)   # indices into jax.devices() for the prefill mesh
    decode_devices: tuple[int, ...] = (0,)    # ... and for the decode mesh (may differ in size)
    # `serve --role router`: the workers' base URLs (--prefill-url / --decode-url flags win).
    prefill_urls: tuple[str, ...] = ()
    decode_urls: tuple[str, ...] = ()

    def validate(self) -> None:
        _check(self.mode in ("colocated", "disaggregated"), "disagg.mode", "must be colocated or disaggregated",
               self.mode)
        for name in ("prefill_urls", "decode_urls"):
            urls = getattr(self, name)
            _check(all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in urls),
                   f"disagg.{name}", "must be a list of http(s):// base URLs", urls)
        if self.mode == "disaggregated":
            _check(len(self.prefill_devices) > 0, "disagg.prefill_devices", "must not be empty",
                   self.prefill_devices)
            _check(len(self.decode_devices) > 0, "disagg.decode_devices", "must not be empty",
                   self.decode_devices)
            _check(not set(self.prefill_devices) & set(self.decode_devices), "disagg.decode_devices",
                   "must not overlap prefill_devices", self.decode_devices)


@dataclass(frozen=True, kw_only=True)
class SamplingDefaultsConfig:
    """Values for the sampling fields a request leaves unset (None: the model's, else llama.cpp's;
    see sampling_defaults.py). They apply to HTTP requests; SamplingParams() keeps its own defaults."""
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None

    def validate(self) -> None:
        from jaxserve.sampling_params import SamplingParams
        try:
            SamplingParams(**{k: v for k, v in dataclasses.asdict(self).items() if v is not None})
        except ValueError as e:
            raise ValueError(f"sampling_defaults.{e}") from None


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None     # also from JAXSERVE_API_KEY; None: no auth
    warmup: bool = True            # build every step program before serving requests
    # Report ready once the programs a lone first request needs are built (seconds, not minutes)
    # and build the rest on a background thread while serving; a request needing a program not
    # built yet waits for it. What an autoscaled fleet wants; false: ready only when all are built.
    warmup_in_background: bool = True
    # Bodies past this answer 413 before they are parsed (4 MiB is ~1M tokens of text, far past
    # any context we serve); the parse itself runs on the event loop, so it must stay small.
    max_request_bytes: int = 4 * 1024 * 1024
    # Tokenization, chat templates and detokenization of requests run in this many threads, off
    # the event loop, so one large request cannot stall the others (or /health).
    tokenizer_threads: int = 2
    timeout_keep_alive_s: float = 5.0      # an idle keep-alive connection is closed after this
    timeout_request_header_s: float = 10.0  # a connection whose request headers are not complete by then is closed

    def validate(self) -> None:
        _check(0 < self.port < 65536, "server.port", "must be in 1..65535", self.port)
        _check(self.max_request_bytes > 0, "server.max_request_bytes", "must be > 0", self.max_request_bytes)
        _check(self.tokenizer_threads > 0, "server.tokenizer_threads", "must be > 0", self.tokenizer_threads)
        _check(self.timeout_keep_alive_s > 0, "server.timeout_keep_alive_s", "must be > 0",
               self.timeout_keep_alive_s)
        _check(self.timeout_request_header_s > 0, "server.timeout_request_header_s", "must be > 0",
               self.timeout_request_header_s)


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    kernel: KernelConfig = field(default_factory=KernelConfig)
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)
    disagg: DisaggConfig = field(default_factory=DisaggConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    sampling_defaults: SamplingDefaultsConfig = field(default_factory=SamplingDefaultsConfig)
    seed: int = 0                  # base of the random stream of requests that give no seed

    def validate(self) -> "EngineConfig":
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value.validate()
        return self


def _check(ok: bool, key: str, why: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{key} {why}, got {value!r}")


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check a YAML value against its field's annotation; tuples accept lists."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, inner[0], value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key} must be a list, got {value!r}")
        elem = typing.get_args(tp)[0]
        return tuple(_coerce(key, elem, v) for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ValueError(f"{key} must be {tp.__name__}, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ValueError(f"Unknown config key: {full}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{full}.")
        else:
            kwargs[key] = _coerce(full, tp, value)
    return cls(**kwargs)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def overrides_from_dotted(pairs: dict[str, Any]) -> dict:
    """{"scheduler.max_num_seqs": 8} -> {"scheduler": {"max_num_seqs": 8}}."""
    out: dict = {}
    for dotted, value in pairs.items():
        node = out
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> EngineConfig:
    """Build an EngineConfig from a YAML file (optional) and a nested override mapping."""
    data: dict = {}
    if path is not None:
        text = Path(path).read_text()
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: top level must be a mapping")
    data = _merge(data, overrides or {})
    return _build(EngineConfig, data, "").validate()
