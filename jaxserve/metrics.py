"""Every Prometheus metric of the server, declared once, with its name and buckets.

Each app owns a `ServerMetrics` with its own CollectorRegistry (never the global one), so tests
can build several apps in one process. Two kinds of metric live here:

- request metrics the HTTP layer observes as tokens stream out (TTFT, inter-token latency,
  end-to-end latency, finished requests by reason), kept in ordinary Histogram/Counter objects;
- engine metrics that mirror EngineStats (running/waiting requests, KV-cache usage, token and
  prefix-cache counters, compiles, speculative decoding), read from `stats()` at scrape time by a
  custom collector, so they never drift from the engine's own counts.

prometheus_client appends `_total` to counter names, so counters are declared without it and come
out as e.g. `jaxserve:prompt_tokens_total`.
"""
from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jaxserve.outputs import EngineStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
                  1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
                 0.75, 1.0, 2.5, 5.0)
E2E_BUCKETS_S = (0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
                 40.0, 50.0, 60.0, 120.0, 240.0)


class StartPhasesCollector(Collector):
    """jaxserve:start_phase_seconds{phase=...}: where a start's time went (load, warm-up, ...)."""

    def __init__(self, phases: Callable[[], dict[str, float]]):
        self._phases = phases

    def describe(self) -> list[Metric]:
        return [self._family({})]

    def collect(self) -> Iterator[Metric]:
        yield self._family(self._phases())

    @staticmethod
    def _family(phases: dict[str, float]) -> Metric:
        family = GaugeMetricFamily("jaxserve:start_phase_seconds",
                                   "Seconds each phase of the start took (fetch, weights, tokenizer, "
                                   "device, warmup until ready, warmup_background).", labels=["phase"])
        for name, seconds in phases.items():
            family.add_metric([name], seconds)
        return family


class EngineStatsCollector(Collector):
    """Exposes an EngineStats snapshot as gauges and counters, read when /metrics is scraped."""

    def __init__(self, stats: Callable[[], EngineStats]):
        self._stats = stats

    def describe(self) -> list[Metric]:
        return list(self._families(EngineStats()))

    def collect(self) -> Iterator[Metric]:
        return self._families(self._stats())

    @staticmethod
    def _families(s: EngineStats) -> Iterator[Metric]:
        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"jaxserve:{name}", doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"jaxserve:{name}", doc, value=value)

        hit_rate = s.prefix_cache_hits / s.prefix_cache_queries if s.prefix_cache_queries else 0.0
        yield gauge("num_requests_running", "Sequences in the running batch.", s.num_running)
        yield gauge("num_requests_waiting", "Requests waiting for a batch slot.", s.num_waiting)
        yield gauge("kv_cache_usage_perc", "Fraction of KV-cache pages in use (1 = full).",
                    s.kv_cache_usage)
        yield gauge("prefix_cache_hit_rate", "Prefix-cache hits / queries since start (pages).",
                    hit_rate)
        yield gauge("program_count", "Step programs the engine has built (compiled, loaded or shared).",
                    s.program_count)
        yield gauge("compile_count", "Step programs compiled by XLA in this process.", s.compile_count)
        yield gauge("programs_loaded", "Step programs loaded from the executable store.", s.programs_loaded)
        yield gauge("programs_pending", "Step programs still to build in the background.",
                    s.programs_pending)
        yield gauge("compile_time_seconds", "Seconds the engine spent building step programs.",
                    s.compile_time_s)
        yield counter("prompt_tokens", "Prompt tokens processed.", s.prompt_tokens_total)
        yield counter("generation_tokens", "Tokens generated.", s.generation_tokens_total)
        yield counter("num_preemptions", "Sequences preempted for lack of KV pages.", s.num_preemptions)
        yield counter("prefix_cache_queries", "Prompt pages looked up in the prefix cache.",
                      s.prefix_cache_queries)
        yield counter("prefix_cache_hits", "Prompt pages found in the prefix cache.", s.prefix_cache_hits)
        yield counter("spec_proposed_tokens", "Draft tokens proposed by speculative decoding.",
                      s.spec_proposed_tokens)
        yield counter("spec_accepted_tokens", "Draft tokens accepted by speculative decoding.",
                      s.spec_accepted_tokens)
        yield counter("kv_transfer_bytes", "KV cache bytes moved from prefill to decode (disaggregated).",
                      s.kv_transfer_bytes)
        yield counter("kv_transfers", "Requests whose KV pages moved from prefill to decode.",
                      s.kv_transfers)
        yield counter("grammar_mask_seconds", "Host seconds spent filling grammar token masks.",
                      s.grammar_mask_time_s)
        yield counter("grammar_mask_batches", "Sampler batches that held a grammar-constrained row.",
                      s.grammar_mask_batches)


class ServerMetrics:
    """The metrics of one app.

    Args:
        stats: returns the engine's latest EngineStats; called on every scrape.
    """

    def __init__(self, stats: Callable[[], EngineStats],
                 start_phases: Callable[[], dict[str, float]] = dict):
        self.registry = CollectorRegistry()
        r = self.registry
        self.time_to_first_token = Histogram(
            "jaxserve:time_to_first_token_seconds", "Seconds from request arrival to its first token.",
            buckets=TTFT_BUCKETS_S, registry=r)
        self.inter_token_latency = Histogram(
            "jaxserve:inter_token_latency_seconds", "Seconds between successive outputs of a sequence.",
            buckets=ITL_BUCKETS_S, registry=r)
        self.e2e_request_latency = Histogram(
            "jaxserve:e2e_request_latency_seconds", "Seconds from request arrival to its last token.",
            buckets=E2E_BUCKETS_S, registry=r)
        self.request_success = Counter(
            "jaxserve:request_success", "Finished requests, by the finish reason of their first choice.",
            labelnames=("finished_reason",), registry=r)
        self.startup_time = Gauge(
            "jaxserve:startup_time_seconds", "Seconds from process start to ready (load + warm-up).",
            registry=r)
        self.warmup_time = Gauge(
            "jaxserve:warmup_time_seconds", "Seconds spent building step programs before ready.",
            registry=r)
        r.register(EngineStatsCollector(stats))
        r.register(StartPhasesCollector(start_phases))

    def render(self) -> bytes:
        """The exposition text of every metric of this app."""
        return generate_latest(self.registry)
