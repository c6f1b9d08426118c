"""Move one request's KV pages from the prefill pools to the decode pools.

Only the request's pages cross: they are gathered on the prefill mesh in power-of-two groups
(37 pages -> 32 + 4 + 1, so a handful of programs serve every count and no padding page is
sent), `jax.device_put` reshards each group onto the decode mesh (e.g. 1 device -> 3, split over
KV heads) and the decode side scatters them into the page ids its own allocator chose.
Everything is dispatched asynchronously: the prefill loop does not wait for the copy.
"""
from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass

import jax
import numpy as np

from jaxserve.kv_cache import KVPages


@functools.partial(jax.jit, static_argnames=())
def _gather(k_pool, v_pool, ids):
    return k_pool[:, ids], v_pool[:, ids]                      # [L, g, S, K*D] each


@functools.partial(jax.jit, donate_argnames=("kv",))
def _scatter(kv: KVPages, k, v, ids) -> KVPages:
    return KVPages(k=kv.k.at[:, ids].set(k), v=kv.v.at[:, ids].set(v))


def _groups(n: int) -> list[tuple[int, int]]:
    """(start, size) runs of power-of-two sizes covering range(n), largest first."""
    out, start = [], 0
    for bit in reversed(range(n.bit_length())):
        size = 1 << bit
        if n & size:
            out.append((start, size))
            start += size
    return out


@dataclass
class KVPayload:
    """One request's pages, already on their way to the decode mesh."""
    groups: list[tuple[jax.Array, jax.Array]]   # per group: K and V [L, g, S, K*D]
    num_pages: int
    nbytes: int
    sent_s: float


class KVTransfer:
    def __init__(self, decode_sharding):
        self.decode_sharding = decode_sharding   # NamedSharding for [L, g, S, K*D] on the decode mesh
        self._lock = threading.Lock()
        self.bytes_total = 0
        self.transfers = 0
        self.seconds: list[float] = []

    def send(self, kv: KVPages, pages: list[int]) -> KVPayload:
        t0 = time.perf_counter()
        groups, nbytes = [], 0
        ids = np.asarray(pages, np.int32)
        for start, size in _groups(len(pages)):
            k, v = _gather(kv.k, kv.v, ids[start:start + size])
            k, v = jax.device_put((k, v), self.decode_sharding)
            groups.append((k, v))
            nbytes += k.nbytes + v.nbytes
        return KVPayload(groups, len(pages), nbytes, t0)

    def warmup(self, source: KVPages, target: KVPages, max_pages: int) -> KVPages:
        """Compile the gather/scatter of every group size, moving reserved page 0 onto itself."""
        size = 1
        while size <= max_pages:
            (k, v), = self.send(source, [0] * size).groups     # a power of two: one group
            target = _scatter(target, k, v, np.zeros(size, np.int32))
            size *= 2
        return target

    def receive(self, kv: KVPages, payload: KVPayload, pages: list[int]) -> KVPages:
        ids = np.asarray(pages, np.int32)
        for (start, size), (k, v) in zip(_groups(payload.num_pages), payload.groups):
            kv = _scatter(kv, k, v, ids[start:start + size])
        with self._lock:
            self.bytes_total += payload.nbytes
            self.transfers += 1
            self.seconds.append(time.perf_counter() - payload.sent_s)
        return kv
