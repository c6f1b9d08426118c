"""Asynchronous scheduling's bookkeeping: a step dispatched but not read back, and the
placeholders it leaves in the sequences it samples for.

The engine dispatches step N+1 before it reads step N's tokens, so the host plans N+1 as if
N had run: each sequence N samples for gets an UNRESOLVED placeholder as its next output token
(counted everywhere a token count matters: positions, pages, the draw's step index), and its
decode row in N+1 reads that token on the device, from N's sampled tokens (feed_row). When N
is read back, each placeholder is replaced, oldest first, through the output processor, as if
the token had been appended then; a sequence that finishes on it drops the placeholders after
it, and whatever N+1 computed for it is never emitted.

The host must know a sequence's latest token before it can pack its next row when a sampler
stage packs from the token history (repetition penalties, grammar masks), when drafts are
proposed from it, and when the sequence leaves for another engine: steps holding such rows are
read back before the next step is planned (must_read_first).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from jaxserve.runner import LaunchedStep
from jaxserve.sequence import UNRESOLVED, Sequence
from jaxserve.step_inputs import StepInputs


@dataclass
class InFlightStep:
    inputs: StepInputs
    launched: LaunchedStep
    # Per row of inputs.sampled: whether its token is an output (False for a chunk that ends
    # inside the prompt). Recorded at dispatch: the placeholders change what a chunk completes.
    emits: list[bool]


def expect_token(seq: Sequence, row: int) -> None:
    """seq's next output token is row `row` of the step being dispatched."""
    seq.output_ids.append(UNRESOLVED)
    seq.num_unresolved += 1
    seq.feed_row = row


def resolve_token(seq: Sequence, append: Callable[[], object]):
    """Replace seq's oldest placeholder by its token: append() appends it (output processor);
    the newer placeholders are put back after it unless that token finished seq."""
    newer = seq.num_unresolved - 1
    drop_unresolved(seq)
    try:
        return append()
    finally:
        if not seq.finished:
            seq.output_ids.extend([UNRESOLVED] * newer)
            seq.num_unresolved = newer


def drop_unresolved(seq: Sequence) -> None:
    """Forget seq's placeholders (it finished, was aborted or failed)."""
    if seq.num_unresolved:
        del seq.output_ids[-seq.num_unresolved:]
        seq.num_unresolved = 0


def needs_known_tokens(seq: Sequence) -> bool:
    """Whether packing seq's next row reads its token history on the host."""
    p = seq.params
    return (seq.grammar is not None or p.repetition_penalty != 1.0 or p.presence_penalty != 0.0
            or p.frequency_penalty != 0.0)


def must_read_first(step: InFlightStep) -> bool:
    """Whether step must be read back before the next one is planned (see the module docstring;
    speculation and hand-offs are the engine's to check)."""
    return bool(step.inputs.verified) or any(needs_known_tokens(w.seq) for w in step.inputs.sampled)
