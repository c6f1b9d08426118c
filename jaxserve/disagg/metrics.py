"""Prometheus metrics of multi-process disaggregated serving, declared once, added to an app's registry.

Workers: KV transfer latency and size histograms, bytes staged but not yet pulled, and the queue
length of their role. The router: per-role queue lengths and in-flight sequences, instances up,
and fail-overs. Counters of transferred bytes come from EngineStats (jaxserve/metrics.py).
"""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

KV_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
KV_BYTES_BUCKETS = tuple(float(1 << b) for b in range(12, 34, 2))    # 4 KiB .. 8 GiB


class WorkerMetrics:
    """Added to a prefill or decode worker's registry."""

    def __init__(self, registry: CollectorRegistry, role: str, queue_length: Callable[[], float],
                 staged_bytes: Callable[[], float] | None = None):
        self.kv_transfer_seconds = Histogram(
            "jaxserve:kv_transfer_seconds",
            "Seconds to move one request's KV pages (prefill: gather + stage; decode: pull).",
            labelnames=("role",), buckets=KV_SECONDS_BUCKETS, registry=registry).labels(role)
        self.kv_transfer_size = Histogram(
            "jaxserve:kv_transfer_size_bytes", "KV bytes of one request's transfer.",
            labelnames=("role",), buckets=KV_BYTES_BUCKETS, registry=registry).labels(role)
        self.kv_pull_failures = Counter(
            "jaxserve:kv_pull_failures", "KV pulls that failed or timed out (decode side).",
            registry=registry)
        Gauge("jaxserve:queue_length", "Requests waiting for a batch slot, by role.",
              labelnames=("role",), registry=registry).labels(role).set_function(queue_length)
        if staged_bytes is not None:
            Gauge("jaxserve:kv_staged_bytes", "KV bytes staged for decode workers, not yet pulled.",
                  registry=registry).set_function(staged_bytes)


class RouterMetrics:
    """Added to the router's registry; the gauges read the router's instance pool at scrape time."""

    def __init__(self, registry: CollectorRegistry, pool):
        queue = Gauge("jaxserve:queue_length", "Requests waiting for a batch slot, by role "
                      "(sum over the role's instances, as last polled).", labelnames=("role",),
                      registry=registry)
        in_flight = Gauge("jaxserve:router_in_flight", "Sequences the router has on each role now.",
                          labelnames=("role",), registry=registry)
        up = Gauge("jaxserve:router_instances_up", "Instances of each role answering /load.",
                   labelnames=("role",), registry=registry)
        for role in ("prefill", "decode"):
            queue.labels(role).set_function(lambda r=role: pool.queue_length(r))
            in_flight.labels(role).set_function(lambda r=role: pool.in_flight(r))
            up.labels(role).set_function(lambda r=role: pool.num_up(r))
        self.failovers = Counter(
            "jaxserve:router_failovers", "Sequence attempts that failed on an instance and were retried.",
            labelnames=("role",), registry=registry)
        self.handoff_seconds = Histogram(
            "jaxserve:router_handoff_seconds",
            "Seconds from a prefill's answer to the decode worker's first token (KV pull included).",
            buckets=KV_SECONDS_BUCKETS, registry=registry)
        self.prefix_routed = Counter(
            "jaxserve:router_prefix_routed", "Prefills sent to the instance caching the prompt's prefix.",
            registry=registry)
