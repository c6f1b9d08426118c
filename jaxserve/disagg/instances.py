"""The router's view of its workers: health, load, and which instance to send a sequence to.

Host only (no JAX). Loads are the router's own in-flight count per instance plus the queue
length each instance reported at the last poll of its /load. Prefill placement prefers the
instance whose prefix cache already holds the longest run of the prompt's pages: the router
remembers, per page-hash chain prefix (page_table.prefix_page_hashes, the same keys the
workers' allocators use), the instance that last prefilled it; it is chosen unless it is
`prefix_slack` sequences busier than the least loaded one.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from collections import OrderedDict
from dataclasses import dataclass

import httpx

from jaxserve.errors import EngineDeadError
from jaxserve.page_table import prefix_page_hashes

log = logging.getLogger(__name__)

ROLES = ("prefill", "decode")


@dataclass
class Instance:
    role: str
    url: str
    up: bool = False
    in_flight: int = 0         # sequences the router has on it now
    num_waiting: int = 0       # as last polled
    num_running: int = 0
    kv_transfer_bytes: int = 0
    kv_transfers: int = 0

    @property
    def load(self) -> int:
        return self.in_flight + self.num_waiting


class InstancePool:
    """The workers of each role, their health and load; the least-loaded and prefix-aware picks."""

    def __init__(self, prefill_urls: list[str], decode_urls: list[str], page_size: int,
                 prefix_slack: int = 4, max_prefix_entries: int = 1 << 16):
        self.instances = {"prefill": [Instance("prefill", u.rstrip("/")) for u in prefill_urls],
                          "decode": [Instance("decode", u.rstrip("/")) for u in decode_urls]}
        self.page_size = page_size
        self.prefix_slack = prefix_slack        # extra load accepted to reuse a cached prefix
        self.max_prefix_entries = max_prefix_entries
        self._prefix_owner: OrderedDict[bytes, str] = OrderedDict()   # page-chain hash -> url
        self._turn = itertools.count()

    def up(self, role: str) -> list[Instance]:
        return [i for i in self.instances[role] if i.up]

    def num_up(self, role: str) -> int:
        return len(self.up(role))

    def queue_length(self, role: str) -> int:
        return sum(i.num_waiting for i in self.up(role))

    def in_flight(self, role: str) -> int:
        return sum(i.in_flight for i in self.instances[role])

    def pick(self, role: str) -> Instance:
        live = self.up(role)
        if not live:
            raise EngineDeadError(f"no {role} worker is available ({len(self.instances[role])} "
                                  f"configured, none answering)")
        turn = next(self._turn)      # rotates ties, so equal loads share the work
        return min(live, key=lambda i: (i.load, (live.index(i) - turn) % len(live)))

    def pick_prefill(self, token_ids: list[int]) -> tuple[Instance, bool]:
        """The prefill instance for a prompt; True when chosen for its cached prefix."""
        least = self.pick("prefill")
        for h in reversed(self._hashes(token_ids)):
            url = self._prefix_owner.get(h)
            if url is None:
                continue
            owner = next((i for i in self.up("prefill") if i.url == url), None)
            if owner is not None and owner.load <= least.load + self.prefix_slack:
                return owner, owner is not least
            break
        return least, False

    def record_prefix(self, token_ids: list[int], inst: Instance) -> None:
        for h in self._hashes(token_ids):
            self._prefix_owner[h] = inst.url
            self._prefix_owner.move_to_end(h)
        while len(self._prefix_owner) > self.max_prefix_entries:
            self._prefix_owner.popitem(last=False)

    def _hashes(self, token_ids: list[int]) -> list[bytes]:
        # The pages a worker's prefix cache can hold: full pages, the last token excluded.
        return prefix_page_hashes(token_ids, self.page_size, (len(token_ids) - 1) // self.page_size)

    def mark_down(self, inst: Instance) -> None:
        if inst.up:
            log.warning("%s worker %s is down", inst.role, inst.url)
        inst.up = False

    async def poll(self, client: httpx.AsyncClient) -> None:
        async def one(inst: Instance) -> None:
            try:
                r = await client.get(f"{inst.url}/load", timeout=2.0)
                load = r.json() if r.status_code == 200 else {}
            except (httpx.HTTPError, ValueError):
                load = {}
            was = inst.up
            inst.up = bool(load.get("ready"))
            if inst.up:
                inst.num_waiting, inst.num_running = load["num_waiting"], load["num_running"]
                inst.kv_transfer_bytes, inst.kv_transfers = load["kv_transfer_bytes"], load["kv_transfers"]
            if inst.up != was:
                log.info("%s worker %s is %s", inst.role, inst.url, "up" if inst.up else "down")

        await asyncio.gather(*(one(i) for role in ROLES for i in self.instances[role]))
