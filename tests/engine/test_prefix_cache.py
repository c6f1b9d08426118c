"""Prefix caching: shared prompt pages are reused and change nothing in the output."""
from __future__ import annotations

import pytest

from jaxserve import SamplingParams

from .conftest import make_llm
from .prompts import PROMPTS

pytestmark = pytest.mark.slow


def test_shared_prefix_reuses_pages_and_output(smollm):
    prefix = " ".join(PROMPTS) + " " + " ".join(PROMPTS)
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    fresh = make_llm(cache__enable_prefix_caching=False)
    want = fresh.generate([prefix + " Summary:"], params, use_tqdm=False)[0].token_ids

    engine = smollm.engine
    smollm.generate([prefix + " Question:"], params, use_tqdm=False)
    hits_before = engine.stats().prefix_cache_hits
    got = smollm.generate([prefix + " Summary:"], params, use_tqdm=False)[0].token_ids
    hits = engine.stats().prefix_cache_hits - hits_before
    shared_pages = len(smollm.tokenizer.encode(prefix)) // engine.config.cache.page_size
    assert hits >= shared_pages - 1 > 0
    assert got == want


def test_pages_are_freed_and_ref_counts_return(tiny):
    alloc = tiny.engine.scheduler.allocator
    tiny.generate(["a b c d e f g h i j k l m n o p q r s t u v w x y z"] * 3,
                  SamplingParams(max_tokens=5), use_tqdm=False)
    assert alloc.num_used == 0
    assert all(alloc.ref_count(p) == 0 for p in range(alloc.num_pages))


def test_cached_pages_are_evicted_least_recently_used_first():
    from jaxserve.page_table import PageAllocator, prefix_page_hashes

    alloc = PageAllocator(num_pages=4, page_size=2)           # 3 usable pages (page 0 is padding)
    keys = prefix_page_hashes([1, 2, 3, 4, 5, 6], page_size=2, num_pages=3)
    pages = [alloc.allocate() for _ in keys]
    for page, key in zip(pages, keys):
        alloc.register(page, key)
    alloc.release(pages)                                     # all cached, unreferenced: LRU a, b, c
    assert alloc.match_prefix(keys[:1]) == pages[:1]          # a used again: LRU b, c, a
    alloc.release(pages[:1])
    assert alloc.allocate() == pages[1]                      # the least recently used goes first
    assert alloc.match_prefix(keys) == pages[:1]             # the chain now breaks at b
    assert alloc.match_prefix([keys[2]]) == [pages[2]]       # c is still cached


def test_page_keys_chain_the_whole_prefix():
    from jaxserve.page_table import prefix_page_hashes

    a = prefix_page_hashes([1, 2, 3, 4], page_size=2, num_pages=2)
    b = prefix_page_hashes([9, 2, 3, 4], page_size=2, num_pages=2)
    assert a[0] != b[0] and a[1] != b[1]                      # same second page, other prefix: other key
    assert prefix_page_hashes([1, 2, 3, 4, 7], page_size=2, num_pages=2) == a
