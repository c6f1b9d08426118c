"""Draft-model proposals: a smaller (or lower-precision) model sharing the tokenizer guesses k tokens.

The draft keeps its own K/V pools but uses the target's page ids: a page holds the target's and
the draft's K/V of the same tokens, so block tables, prefix sharing, preemption and rollback need
no second allocator. To stay in step, the draft runs over every batch the target runs (prefill
chunks, decodes and verifications); proposing is k greedy decode steps ahead of the sequence.
"""
from __future__ import annotations

import numpy as np

from jaxserve.runner import ModelRunner
from jaxserve.sampler import build_sampling
from jaxserve.step_inputs import Shapes, build_decode_at


class DraftModelProposer:
    def __init__(self, runner: ModelRunner, shapes: Shapes):
        self.runner = runner
        self.shapes = shapes

    def lookahead(self, seq, k: int) -> int:
        return k

    def observe(self, batch) -> None:
        """Write the draft's K/V for a batch the target just ran."""
        self.runner.forward_only(batch)

    def propose(self, seqs, lengths: list[int]) -> list[list[int]]:
        drafts: list[list[int]] = [[] for _ in seqs]
        tokens = [s.all_ids[s.num_computed] for s in seqs]
        positions = [s.num_computed for s in seqs]
        for step in range(max(lengths)):
            active = [i for i, k in enumerate(lengths) if k > step]
            batch = build_decode_at([seqs[i] for i in active], [tokens[i] for i in active],
                                    [positions[i] + step for i in active], self.shapes)
            arrays = build_sampling([], len(batch.kv_lens), self.shapes)   # all rows greedy
            out = np.asarray(self.runner.run(batch, arrays).tokens)
            for row, i in enumerate(active):
                drafts[i].append(int(out[row]))
                tokens[i] = int(out[row])
        return drafts
