"""SpeculationController: when to speculate, how far, and what it has earned so far.

The engine asks it twice per step: before scheduling, whether this step may propose at all
(`lookahead()`: None, or the per-sequence draft length the scheduler reserves pages for), and
after the verify pass, with each sequence's accepted count (`record`, then `end_step`). All of
it is deterministic: it depends only on the tokens verified so far, so greedy and seeded outputs
do not depend on timing.
"""
from __future__ import annotations

from typing import Callable

from jaxserve.config import SpeculativeConfig
from jaxserve.sequence import SeqStatus, Sequence

# Weight of the newest verify step in the moving average of accepted tokens, and the decode-step
# period of probes while that average is too low.
_ACCEPT_EMA_WEIGHT = 0.25
_PROBE_EVERY = 8
_MAX_BACKOFF_STEPS = 16


class SpeculationController:
    def __init__(self, proposer, config: SpeculativeConfig, max_num_seqs: int, max_model_len: int):
        self.proposer = proposer               # NgramProposer / DraftModelProposer (spec/)
        self.config = config
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        self.proposed = 0                      # draft tokens proposed, ever
        self.accepted = 0                      # draft tokens accepted, ever
        self.verify_steps = 0                  # verify passes run
        self._accepted_ema: float | None = None  # draft tokens accepted per verified sequence
        self._probe_wait = 0                   # decode steps left before the next probe

    def lookahead(self, scheduler) -> Callable[[Sequence], int] | None:
        """spec_len if this step may propose at all, else None.

        No speculation when more sequences may decode this step than max_batch_for_speculation
        (a verify pass over a large batch costs more than its accepted tokens save on a CPU). And
        when the moving average of draft tokens accepted per verified sequence is below
        min_accepted_tokens, only every _PROBE_EVERY-th decode step proposes: a probe re-measures
        acceptance, and the average climbing back opens every step again.
        """
        running = scheduler.running
        decoding = [s for s in running if s.status is SeqStatus.RUNNING and s.is_decoding]
        # Adopted sequences (disaggregated decode side) join the batch during schedule().
        joining = min(len(scheduler.adopted), max(0, self.max_num_seqs - len(running)))
        if not decoding and not joining:
            return None
        if len(decoding) + joining <= self.config.max_batch_for_speculation:
            if self._probe_wait == 0:
                return self.spec_len
            self._probe_wait -= 1
        for seq in decoding:   # per-sequence back-off counts decode steps, proposing or not
            if seq.spec_skip > 0:
                seq.spec_skip -= 1
        return None

    def spec_len(self, seq: Sequence) -> int:
        """Tokens to propose for seq this step (0: decode plainly)."""
        p = seq.params
        if (not p.use_speculation or p.logprobs is not None or p.repetition_penalty != 1.0
                or p.presence_penalty or p.frequency_penalty or seq.grammar is not None):
            return 0   # these need per-position logprobs, histories or masks the verifier does not track
        if seq.spec_skip > 0:
            seq.spec_skip -= 1
            return 0
        room = min(p.max_tokens - len(seq.output_ids) - 1, self.max_model_len - seq.num_tokens)
        k = min(self.config.num_speculative_tokens, room)
        return self.proposer.lookahead(seq, k) if k > 0 else 0

    def propose(self, seqs: list[Sequence], lengths: list[int]) -> list[list[int] | None]:
        """Each sequence's draft (None where its length is 0 or the proposer has none)."""
        if not any(lengths):
            return [None] * len(seqs)
        return [d or None for d in self.proposer.propose(seqs, lengths)]

    def observe(self, batch) -> None:
        """Let the proposer see the step's batch (a draft model keeps its own cache in step)."""
        self.proposer.observe(batch)

    def record(self, seq: Sequence, drafted: int, accepted: int) -> None:
        """One sequence's verify outcome; sequences whose proposals keep failing back off."""
        self.proposed += drafted
        self.accepted += accepted
        seq.spec_misses = 0 if accepted else seq.spec_misses + 1
        seq.spec_skip = 0 if accepted else min(1 << seq.spec_misses, _MAX_BACKOFF_STEPS)

    def end_step(self, accepted: int, num_verified: int) -> None:
        """Fold one verify pass (num_verified > 0 sequences, accepted draft tokens in all)."""
        self.verify_steps += 1
        mean = accepted / num_verified
        ema = self._accepted_ema
        self._accepted_ema = mean if ema is None else ema + _ACCEPT_EMA_WEIGHT * (mean - ema)
        if self._accepted_ema < self.config.min_accepted_tokens:
            self._probe_wait = _PROBE_EVERY - 1
