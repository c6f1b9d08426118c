"""Compile every step shape before serving, so no request pays for a compile.

Every layout Shapes.step_shapes lists (decode-only and verify-only steps per decode bucket,
prefill-only and mixed steps per prefill bucket and chunk-slot count) x every block-table
width, packed by the same pack_step the engine uses (with no work in it), so what is compiled
is exactly what a step can reach. The greedy sampler and verifier for each row count come with
them. Padded batches point at reserved page 0 only, so the pools' contents do not matter.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from jaxserve.outputs import RequestMetrics
from jaxserve.sampler import build_sampling
from jaxserve.sequence import Sequence
from jaxserve.step_inputs import pack_step, verify_rows

log = logging.getLogger(__name__)


def warmup_runner(runner, shapes, model_only: bool = False) -> None:
    """Compile runner's steps for every reachable shape.

    model_only: a draft model runs the model over the target's batches but samples only its own
      decode steps, so it compiles sampling for those alone.
    """
    t0 = time.perf_counter()
    for width in shapes.table_widths:
        for shape in shapes.step_shapes():
            inputs = pack_step([], shapes, shape=shape, width=width)
            if not model_only:
                runner.step(inputs)
            elif shape.prefill_slots or shape.short_q_len > 1:
                runner.forward_only(inputs.batch)
            else:
                runner.run(inputs.batch, inputs.sampling)
    log.info("warmup compiled %d programs in %.1f s", runner.compiles.count, time.perf_counter() - t0)


def warmup_sampling(runner, shapes, examples: list[Sequence]) -> None:
    """Compile the sampler (and, with speculation, the verifier) for each example sequence's
    stages at every logits layout, so requests sampled like the examples never compile either.

    warmup_runner compiles greedy sampling only; the sampler is a jitted program of its own per
    set of enabled stages (sampler/pipeline.py), so e.g. a server's default sampling or a
    grammar mask would otherwise compile on the first batch of each size that holds one.
    Sampler programs only: nothing here runs the model.
    """
    t0, before = time.perf_counter(), runner.compiles.count
    layouts = sorted({(s.sample_rows, s.verify_rows) for s in shapes.step_shapes()})
    for example in examples:
        for rows, verify in layouts:
            logits = np.zeros((rows + verify, runner.arch.vocab_size), np.float32)
            runner.sample_only(logits, build_sampling([example] * rows, rows, shapes), rows)
            if verify and example.grammar is None:   # constrained rows never speculate
                k = shapes.verify_q - 1
                row_seqs, offsets, judged = verify_rows([example] * (verify // (k + 1)),
                                                        [[0] * k] * (verify // (k + 1)), verify)
                runner.verify_only(logits, build_sampling(row_seqs, verify, shapes,
                                                          step_offsets=offsets), judged)
    log.info("warmup compiled %d sampling programs for %d request kinds in %.1f s",
             runner.compiles.count - before, len(examples), time.perf_counter() - t0)


def example_sequence(params, grammar=None) -> Sequence:
    """A stand-in sequence that packs as a request with these params (and grammar) would."""
    return Sequence(seq_id=-1, request_id="warmup", index=0, prompt_ids=[0], params=params, seed=0,
                    metrics=RequestMetrics(arrival_s=0.0), grammar=grammar)
