"""OutputProcessor: what happens to a sampled token on the host.

For each token the engine hands it: append it to the sequence (with its logprobs and timing),
advance the sequence's grammar, decide whether the sequence is done (EOS, a stop token, the
grammar's end, max_tokens, max_model_len, or a stop string), detokenize incrementally, cut the
text at a stop string while holding back a tail that could still become one, and return the
SequenceDelta the caller streams. It owns one IncrementalDetokenizer per live sequence.

It never touches the scheduler: a finished sequence is handed to `on_finish` (the engine frees
its pages there).
"""
from __future__ import annotations

import time
from typing import Callable

from jaxserve.outputs import FinishReason, SequenceDelta, TokenLogprob
from jaxserve.sequence import Sequence
from jaxserve.tokenizer import IncrementalDetokenizer, Tokenizer


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer, max_model_len: int,
                 on_finish: Callable[[Sequence], None]):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.on_finish = on_finish
        self.generation_tokens_total = 0
        self._detok: dict[int, IncrementalDetokenizer] = {}

    # ----------------------------------------------------------------- detokenizer ownership
    def open(self, seq: Sequence) -> None:
        """A new sequence: its text starts after the prompt."""
        self._detok[seq.seq_id] = self._new_detokenizer(seq)

    def resume(self, seq: Sequence, detokenizer: IncrementalDetokenizer) -> None:
        """A sequence continued from elsewhere, with its detokenizer as it was there."""
        self._detok[seq.seq_id] = detokenizer

    def replay(self, seq: Sequence) -> IncrementalDetokenizer:
        """A detokenizer (and seq's stop-string state) rebuilt by replaying seq.output_ids, which
        were already emitted elsewhere: the next delta continues the emitted text exactly."""
        detok = self._new_detokenizer(seq)
        for token in seq.output_ids:
            self._apply_stop_strings(seq, detok.push([token]), final=False)
        return detok

    def _new_detokenizer(self, seq: Sequence) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self.tokenizer, seq.prompt_ids,
                                      skip_special_tokens=seq.params.skip_special_tokens)

    def close(self, seq: Sequence) -> IncrementalDetokenizer | None:
        """Forget a sequence; returns its detokenizer (a hand-off carries it along)."""
        return self._detok.pop(seq.seq_id, None)

    # ------------------------------------------------------------------------------ tokens
    def append_sampled(self, seq: Sequence, result, row: int) -> SequenceDelta:
        """Row `row` of a step's sampling result (token, and its logprobs if asked for)."""
        token = int(result.tokens[row])
        logprobs = None
        if seq.params.logprobs is not None:
            k = seq.params.logprobs
            top = [(int(t), float(lp)) for t, lp in zip(result.top_ids[row][:k], result.top_logprobs[row][:k])]
            logprobs = [TokenLogprob(token, float(result.logprobs[row]), top)]
        return self.append(seq, token, logprobs)

    def append_tokens(self, seq: Sequence, tokens: list[int]) -> list[SequenceDelta]:
        """Several tokens (a verified draft); those after the one that finishes seq are dropped."""
        deltas = []
        for t in tokens:
            deltas.append(self.append(seq, t, None))
            if seq.finished:
                break
        return deltas

    def append(self, seq: Sequence, token: int, logprobs: list[TokenLogprob] | None) -> SequenceDelta:
        now = time.perf_counter()
        if seq.metrics.first_token_s is None:
            seq.metrics.first_token_s = now
        seq.metrics.token_times_s.append(now)
        seq.output_ids.append(token)
        self.generation_tokens_total += 1
        if logprobs:
            seq.output_logprobs.extend(logprobs)

        p = seq.params
        reason = None
        # The grammar consumes every token (EOS too); when nothing may follow, the output is done.
        grammar_done = seq.grammar.advance(token) if seq.grammar is not None else False
        if (token in p.stop_token_ids or (not p.ignore_eos and token in self.tokenizer.eos_token_ids)
                or grammar_done):
            reason = FinishReason.STOP
        elif len(seq.output_ids) >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            reason = FinishReason.LENGTH
        detok = self._detok[seq.seq_id]
        text = detok.push([token])
        if reason is not None:
            text += detok.flush()
        text, stopped = self._apply_stop_strings(seq, text, final=reason is not None)
        if stopped:
            reason = FinishReason.STOP
        if reason is not None:
            seq.finish_reason = reason
            seq.metrics.finished_s = time.perf_counter()
            self.close(seq)
            self.on_finish(seq)
        return delta(seq, [token], text, logprobs)

    def _apply_stop_strings(self, seq: Sequence, new_text: str, final: bool) -> tuple[str, bool]:
        """Trim at the first stop string; hold back a tail that could still start one."""
        stops = seq.params.stop
        full = seq.text + seq.held_text + new_text if stops else seq.text + new_text
        if not stops:
            seq.text = full
            return new_text, False
        start = max(0, len(seq.text) - max(len(s) for s in stops))
        hits = [i for i in (full.find(s, start) for s in stops) if i >= 0]
        if hits:
            cut = min(hits)
            out = full[len(seq.text):cut]
            seq.text, seq.held_text = full[:cut], ""
            return out, True
        hold = 0 if final else max(len(s) for s in stops) - 1
        emit_to = max(len(seq.text), len(full) - hold)
        out = full[len(seq.text):emit_to]
        seq.text, seq.held_text = full[:emit_to], full[emit_to:]
        return out, False


def delta(seq: Sequence, tokens: list[int], text: str, logprobs: list[TokenLogprob] | None,
          error: str | None = None) -> SequenceDelta:
    return SequenceDelta(request_id=seq.request_id, index=seq.index, token_ids=tokens, text=text,
                         logprobs=logprobs, finish_reason=seq.finish_reason,
                         num_prompt_tokens=len(seq.prompt_ids), error=error)
