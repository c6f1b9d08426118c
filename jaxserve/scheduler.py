"""Scheduler: picks each step's work under a token budget and owns the page bookkeeping. Host only.

Every step (continuous batching):
  1. each running sequence with one pending token gets a decode slot; if its next token starts a
     new page and none is free, the newest running sequence is preempted (pages released, K/V to
     be recomputed later; its output so far is kept, so it resumes exactly where it was);
  2. a budget of its own goes to prefill chunks: first sequences part-way through their
     prompt, then waiting sequences (preempted ones first), which look their prompt's full pages
     up in the prefix cache before anything is computed.
advance() records what a dispatched step computes and publishes newly filled pages of known
tokens to the prefix cache (publish() catches up once an in-flight token is read back); finishing
is left to the engine, which releases pages through finish(). With a step in flight a sequence
may already hold its last token (unresolved): it is given no further step.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from jaxserve.config import CacheConfig, SchedulerConfig
from jaxserve.page_table import OutOfPages, PageAllocator, page_hash
from jaxserve.sequence import SeqStatus, Sequence


@dataclass
class PrefillChunk:
    seq: Sequence
    start: int        # first token position computed
    length: int       # tokens computed this step

    @property
    def completes_prompt(self) -> bool:
        """The chunk reaches the last known token, so its logits give the next token."""
        return self.start + self.length == self.seq.num_tokens


@dataclass
class StepPlan:
    decodes: list[Sequence] = field(default_factory=list)
    spec_lens: list[int] = field(default_factory=list)      # proposed tokens per decode (0: none)
    prefills: list[PrefillChunk] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.decodes and not self.prefills

    @property
    def num_tokens(self) -> int:
        return len(self.decodes) + sum(self.spec_lens) + sum(c.length for c in self.prefills)


class Scheduler:
    def __init__(self, sched: SchedulerConfig, cache: CacheConfig, max_prefill_seqs: int = 8):
        self.cfg = sched
        self.page_size = cache.page_size
        self.allocator = PageAllocator(cache.num_pages, cache.page_size, cache.enable_prefix_caching)
        self.max_prefill_seqs = max_prefill_seqs
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.adopted: deque[Sequence] = deque()   # arrived with their K/V (disaggregated decode side)
        self.num_preemptions = 0

    # ------------------------------------------------------------------ admission and removal
    def add(self, seq: Sequence) -> None:
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)

    def adopt(self, seq: Sequence) -> None:
        """Take a sequence whose pages were filled elsewhere; it joins the batch when there is room."""
        seq.status = SeqStatus.RUNNING
        seq.num_published = 0
        self.adopted.append(seq)

    def detach(self, seq: Sequence) -> None:
        """Hand a running sequence over to another engine; its pages stay with it for copying."""
        self.running.remove(seq)

    def finish(self, seq: Sequence) -> None:
        """Drop a sequence wherever it is and release its pages (finished or aborted)."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        elif seq in self.adopted:
            self.adopted.remove(seq)
        self.allocator.release(seq.pages)
        seq.pages = []
        seq.status = SeqStatus.FINISHED

    @property
    def num_unfinished(self) -> int:
        return len(self.running) + len(self.waiting) + len(self.adopted)

    # ------------------------------------------------------------------------------- planning
    def schedule(self, lookahead: Callable[[Sequence], int] | None = None) -> StepPlan:
        """Plan one step. lookahead(seq) says how many speculative tokens a decode will verify."""
        plan = StepPlan()
        budget = self.cfg.max_num_batched_tokens
        while self.adopted and len(self.running) < self.cfg.max_num_seqs:
            self.running.append(self.adopted.popleft())
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status is not SeqStatus.RUNNING or not seq.is_decoding or _output_complete(seq):
                continue
            k = min(lookahead(seq), budget - 1) if lookahead else 0
            if not self._reserve(seq, seq.num_computed + 1 + k, preempt=True):
                continue  # seq itself was preempted
            plan.decodes.append(seq)
            plan.spec_lens.append(k)
            budget -= 1 + k

        # Decodes and chunks share one pass, but the chunks' part of it is padded to a prefill
        # bucket anyway: letting decodes shrink the prefill budget would only split prompts into
        # odd chunks (a 512-token prompt beside 32 decodes: 480 + 32 tokens, two rows in the next
        # step) and pad the rest, costing compute without shortening any step.
        budget = self.cfg.max_num_batched_tokens
        for seq in list(self.running):
            if budget == 0 or len(plan.prefills) == self.max_prefill_seqs:
                break
            if seq.status is SeqStatus.RUNNING and not seq.is_decoding and not seq.num_unresolved:
                chunk = self._plan_chunk(seq, budget)
                if chunk:
                    plan.prefills.append(chunk)
                    budget -= chunk.length

        while (self.waiting and budget > 0 and len(self.running) < self.cfg.max_num_seqs
               and len(plan.prefills) < self.max_prefill_seqs):
            seq = self.waiting[0]
            if seq.num_unresolved:   # preempted with a token in flight: its prompt is not known yet
                break
            self._match_prefix(seq)
            chunk = self._plan_chunk(seq, budget)
            if chunk is None:
                self.allocator.release(seq.pages)
                seq.pages, seq.num_computed = [], 0
                break
            self.waiting.popleft()
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            plan.prefills.append(chunk)
            budget -= chunk.length

        stuck = [s for s in self.running if not _output_complete(s)]
        if plan.empty and stuck:
            # Everything running is stuck on pages: free the newest and try again.
            self._preempt(stuck[-1])
            return self.schedule(lookahead)
        return plan

    def _plan_chunk(self, seq: Sequence, budget: int) -> PrefillChunk | None:
        length = min(seq.num_pending, budget)
        free_tokens = (len(seq.pages) + self.allocator.num_available) * self.page_size - seq.num_computed
        length = min(length, free_tokens)
        if length <= 0:
            return None
        if not self._reserve(seq, seq.num_computed + length, preempt=False):
            return None
        return PrefillChunk(seq, seq.num_computed, length)

    def _reserve(self, seq: Sequence, num_tokens: int, preempt: bool) -> bool:
        """Give seq pages for its first num_tokens tokens, preempting newer sequences if allowed."""
        needed = -(-num_tokens // self.page_size) - len(seq.pages)
        while needed > 0:
            try:
                seq.pages.append(self.allocator.allocate())
                needed -= 1
            except OutOfPages:
                if not preempt:
                    return False
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.allocator.release(seq.pages)
        seq.pages, seq.num_computed = [], 0
        seq.status = SeqStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def _match_prefix(self, seq: Sequence) -> None:
        # Leave at least one token to compute: its logits give the next token.
        full = (seq.num_tokens - 1) // self.page_size
        self._extend_keys(seq, full)
        seq.pages = self.allocator.match_prefix(seq.page_keys[:full])
        seq.num_computed = len(seq.pages) * self.page_size
        seq.num_published = len(seq.pages)

    def _extend_keys(self, seq: Sequence, num_pages: int) -> None:
        S = self.page_size
        ids = seq.all_ids
        while len(seq.page_keys) < num_pages:
            i = len(seq.page_keys)
            parent = seq.page_keys[-1] if seq.page_keys else None
            seq.page_keys.append(page_hash(parent, ids[i * S:(i + 1) * S]))

    def trim(self, seq: Sequence) -> None:
        """Release pages past the sequence's tokens (speculative slots that were rejected)."""
        keep = -(-seq.num_tokens // self.page_size)
        if len(seq.pages) > keep:
            self.allocator.release(seq.pages[keep:])
            del seq.pages[keep:]

    # -------------------------------------------------------------------------------- results
    def advance(self, seq: Sequence, num_computed: int) -> None:
        """Record that seq's first num_computed tokens have K/V (or will have: their step is
        dispatched); publish the full pages whose tokens are all known."""
        seq.num_computed = num_computed
        self.publish(seq)

    def publish(self, seq: Sequence) -> None:
        """Offer seq's full, computed pages of known tokens to the prefix cache (a page holding
        an unresolved token waits until the token is read back)."""
        full = min(min(seq.num_computed, seq.num_known) // self.page_size, len(seq.pages))
        if full > seq.num_published:
            self._extend_keys(seq, full)
            for i in range(seq.num_published, full):
                self.allocator.register(seq.pages[i], seq.page_keys[i])
            seq.num_published = full


def _output_complete(seq: Sequence) -> bool:
    """seq's last token is already sampled (in flight): no further step is owed to it.

    Only while a step is in flight can a running sequence be here; once its tokens are read
    back it is finished (the engine caps max_tokens at the model length when it is added).
    """
    return len(seq.output_ids) >= seq.params.max_tokens
