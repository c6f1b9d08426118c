"""PageAllocator: free list, reference counts and the prefix cache over KV pages. Host only.

A full page whose tokens (and everything before them) are known gets a hash-chain key:
key_i = hash(key_{i-1}, tokens of page i). Requests with the same prefix find the same keys and
share those pages (ref count > 1). A cached page whose ref count falls to zero is not freed at
once: it stays findable and is evicted least-recently-used only when a fresh page is needed.
Page 0 is reserved for padding writes and is never handed out.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Sequence


def page_hash(parent: bytes | None, tokens: Sequence[int]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(parent or b"root")
    h.update(b",".join(str(t).encode() for t in tokens))
    return h.digest()


def prefix_page_hashes(tokens: Sequence[int], page_size: int, num_pages: int) -> list[bytes]:
    """Hash chain of the first num_pages full pages of tokens."""
    out: list[bytes] = []
    parent = None
    for i in range(num_pages):
        parent = page_hash(parent, tokens[i * page_size:(i + 1) * page_size])
        out.append(parent)
    return out


class OutOfPages(Exception):
    pass


class PageAllocator:
    def __init__(self, num_pages: int, page_size: int, enable_prefix_caching: bool = True):
        if num_pages < 2:
            raise ValueError(f"cache.num_pages must be >= 2, got {num_pages}")
        self.num_pages = num_pages
        self.page_size = page_size
        self.enable_prefix_caching = enable_prefix_caching
        self._free: list[int] = list(range(num_pages - 1, 0, -1))  # pop() hands out low ids first
        self._refs = [0] * num_pages
        self._hash_of: dict[int, bytes] = {}                       # page -> its prefix key
        self._page_of: dict[bytes, int] = {}                       # prefix key -> page
        self._evictable: OrderedDict[int, None] = OrderedDict()    # cached, unreferenced; LRU first
        self.prefix_queries = 0
        self.prefix_hits = 0

    # ---- capacity
    @property
    def num_usable(self) -> int:
        return self.num_pages - 1

    @property
    def num_available(self) -> int:
        """Pages that allocate() can hand out now (free or evictable)."""
        return len(self._free) + len(self._evictable)

    @property
    def num_used(self) -> int:
        return self.num_usable - self.num_available

    # ---- allocation
    def allocate(self) -> int:
        if self._free:
            page = self._free.pop()
        elif self._evictable:
            page, _ = self._evictable.popitem(last=False)
            del self._page_of[self._hash_of.pop(page)]
        else:
            raise OutOfPages
        self._refs[page] = 1
        return page

    def release(self, pages: Sequence[int]) -> None:
        """Drop one reference to each page; pages that reach zero become free or evictable."""
        for page in pages:
            self._refs[page] -= 1
            if self._refs[page] < 0:
                raise RuntimeError(f"page {page} released more often than taken")
            if self._refs[page] == 0:
                if page in self._hash_of:
                    self._evictable[page] = None
                else:
                    self._free.append(page)

    # ---- prefix cache
    def match_prefix(self, hashes: Sequence[bytes]) -> list[int]:
        """Take a reference on the longest run of cached pages matching the hash chain."""
        if not self.enable_prefix_caching:
            return []
        self.prefix_queries += len(hashes)
        pages = []
        for h in hashes:
            page = self._page_of.get(h)
            if page is None:
                break
            if self._refs[page] == 0:
                del self._evictable[page]
            self._refs[page] += 1
            pages.append(page)
        self.prefix_hits += len(pages)
        return pages

    def register(self, page: int, key: bytes) -> None:
        """Publish a filled page under its prefix key (first writer wins)."""
        if not self.enable_prefix_caching or page in self._hash_of or key in self._page_of:
            return
        self._hash_of[page] = key
        self._page_of[key] = page

    def ref_count(self, page: int) -> int:
        return self._refs[page]

    def is_cached(self, page: int) -> bool:
        """The page is published in the prefix cache (findable by its key)."""
        return page in self._hash_of
