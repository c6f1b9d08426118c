"""Prompt-lookup (n-gram) proposals: continue the latest earlier match of the sequence's suffix.

No weights: when the output repeats the prompt (editing, summarising, code), the tokens that
followed the last occurrence of the current n-gram are a good guess for what comes next.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def propose_ngram(tokens: list[int], k: int, ngram_max: int, ngram_min: int) -> list[int]:
    """Up to k tokens following the latest earlier occurrence of the longest matching suffix."""
    if k <= 0 or len(tokens) <= ngram_min:
        return []
    arr = np.asarray(tokens, dtype=np.int64)
    for n in range(min(ngram_max, len(arr) - 1), ngram_min - 1, -1):
        suffix = arr[-n:]
        windows = sliding_window_view(arr[:-1], n)          # every earlier n-gram, suffix excluded
        hits = np.flatnonzero((windows == suffix).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n
            return arr[start:start + k].tolist()
    return []


class NgramProposer:
    """Proposes while scheduling, so a sequence with no match reserves no extra pages."""

    def __init__(self, ngram_max: int, ngram_min: int):
        self.ngram_max, self.ngram_min = ngram_max, ngram_min
        self._pending: dict[int, list[int]] = {}

    def lookahead(self, seq, k: int) -> int:
        draft = propose_ngram(seq.all_ids, k, self.ngram_max, self.ngram_min)
        self._pending[seq.seq_id] = draft
        return len(draft)

    def observe(self, batch) -> None:
        pass

    def propose(self, seqs, lengths: list[int]) -> list[list[int]]:
        drafts = [self._pending.get(s.seq_id, [])[:k] for s, k in zip(seqs, lengths)]
        self._pending.clear()   # entries of sequences preempted after lookahead die here too
        return drafts
