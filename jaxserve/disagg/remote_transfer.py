"""KV pages between processes: staged on the prefill worker, pulled by the decode worker.

P (prefill worker), inside Engine.step's hand-off hook:
  1. `KVStager.stage(kv, pages)` gathers exactly the request's pages in power-of-two groups
     (kv_transfer's `_gather`: new buffers, so the pool pages are released at once; later steps
     are ordered after the gather on the device) and offers them on JAX's transfer server under
     a fresh uuid with `await_pull(uuid, arrays, timeout)`. The Ticket names address and uuid.
  2. `release(uuid)` (POST /release from the decode side) drops our reference; staged arrays
     nobody pulls are dropped after `timeout_s` anyway (by the transfer server and by `expire`).
D (decode worker):
  3. `KVPuller.pull(ticket)` (its own thread: a pull of an unknown uuid blocks until the
     connection closes, so callers bound it with a timeout) fetches each group straight into
     the decode pool's sharding.
  4. `KVPuller.scatter(kv, groups, pages)` (engine thread) writes the groups into the page ids
     the decode allocator chose (kv_transfer's `_scatter`, pools donated).
"""
from __future__ import annotations

import datetime
import logging
import secrets
import threading
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.disagg.kv_transfer import _gather, _groups, _scatter
from jaxserve.disagg.worker_api import Ticket
from jaxserve.kv_cache import KVPages

log = logging.getLogger(__name__)


def start_server(host: str = "127.0.0.1"):
    from jax.experimental import transfer
    return transfer.start_transfer_server(jax.devices()[0].client, f"{host}:0", [f"{host}:0"])


@dataclass
class _Staged:
    arrays: list[jax.Array]       # K, V per group: [L, g, S, K*D]
    nbytes: int
    expires_s: float


class KVStager:
    """Prefill side: offers gathered pages for one pull each; counts what it staged."""

    def __init__(self, host: str = "127.0.0.1", timeout_s: float = 30.0, release_url: str = ""):
        self.server = start_server(host)
        self.address: str = self.server.address()
        self.timeout_s = timeout_s
        self.release_url = release_url
        self._staged: dict[int, _Staged] = {}
        self._lock = threading.Lock()
        self.bytes_total = 0
        self.tickets_total = 0
        self.expired_total = 0

    def stage(self, kv: KVPages, pages: list[int]) -> Ticket:
        """Gather `pages` out of the pools and offer them; returns the ticket to pull them by."""
        ids = np.asarray(pages, np.int32)
        arrays = []
        for start, size in _groups(len(pages)):
            arrays += _gather(kv.k, kv.v, ids[start:start + size])
        nbytes = sum(a.nbytes for a in arrays)
        uuid = secrets.randbits(62)
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=self.timeout_s)
        self.server.await_pull(uuid, arrays, timeout=deadline)
        with self._lock:
            self._expire_locked()
            self._staged[uuid] = _Staged(arrays, nbytes, time.monotonic() + self.timeout_s)
            self.bytes_total += nbytes
            self.tickets_total += 1
        return Ticket(address=self.address, uuid=uuid, num_pages=len(pages),
                      group_shapes=[list(a.shape) for a in arrays[::2]], dtype=str(kv.k.dtype),
                      nbytes=nbytes, release_url=self.release_url)

    def release(self, uuid: int) -> bool:
        with self._lock:
            self._expire_locked()
            return self._staged.pop(uuid, None) is not None

    @property
    def staged_bytes(self) -> int:
        with self._lock:
            self._expire_locked()
            return sum(s.nbytes for s in self._staged.values())

    def _expire_locked(self) -> None:
        now = time.monotonic()
        for uuid in [u for u, s in self._staged.items() if s.expires_s < now]:
            del self._staged[uuid]
            self.expired_total += 1


class KVPuller:
    """Decode side: pulls staged groups into `sharding` (the decode pools' own) and scatters them."""

    def __init__(self, sharding, host: str = "127.0.0.1"):
        self.sharding = sharding
        self.server = start_server(host)
        self._conns: dict[str, object] = {}
        self._lock = threading.Lock()
        self.bytes_total = 0
        self.transfers = 0

    def pull(self, ticket: Ticket) -> list[tuple[jax.Array, jax.Array]]:
        """Blocking; returns per group (K, V) on the decode devices, ready."""
        with self._lock:
            conn = self._conns.get(ticket.address)
            if conn is None:
                conn = self._conns[ticket.address] = self.server.connect(ticket.address)
        specs = []
        for shape in ticket.group_shapes:
            spec = jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(ticket.dtype), sharding=self.sharding)
            specs += [spec, spec]
        try:
            arrays = jax.block_until_ready(conn.pull(ticket.uuid, specs))
        except Exception:
            with self._lock:   # a broken connection stays broken: reconnect next time
                if self._conns.get(ticket.address) is conn:
                    del self._conns[ticket.address]
            raise
        with self._lock:
            self.bytes_total += ticket.nbytes
            self.transfers += 1
        return list(zip(arrays[::2], arrays[1::2]))

    @staticmethod
    def scatter(kv: KVPages, groups: list[tuple[jax.Array, jax.Array]], pages: list[int]) -> KVPages:
        """Write pulled groups into pool pages `pages` (in order); the pools are donated."""
        ids = np.asarray(pages, np.int32)
        for (start, size), (k, v) in zip(_groups(len(pages)), groups):
            kv = _scatter(kv, k, v, ids[start:start + size])
        return kv
