"""Build every program a step can reach before serving it, without running any.

A warm-up plan has one task per program: for each block-table width and each layout
Shapes.step_shapes lists (packed by the same pack_step the engine uses, with no work in it), the
model pass and greedy sampling (and verification) of its rows; then the sampler for each example
request kind at every logits layout. A task only builds (ModelRunner.prepare_*: compiled, loaded
from the executable store, or shared), so tasks can run on another thread while the engine serves.

`first` holds what a first request needs alone: its prompt prefilled in one sequence slot at any
prefill bucket, then decoded in the smallest decode bucket, at the smallest table width, sampled
greedily or like the unconstrained example kinds. A server may report ready after `first` and build `rest`
in the background (server.warmup_in_background).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable

from jaxserve.outputs import RequestMetrics
from jaxserve.sampler import build_sampling
from jaxserve.sequence import Sequence
from jaxserve.step_inputs import StepShape, pack_step, verify_rows

log = logging.getLogger(__name__)

Task = Callable[[], None]


@dataclasses.dataclass
class WarmupPlan:
    first: list[Task] = dataclasses.field(default_factory=list)
    rest: list[Task] = dataclasses.field(default_factory=list)

    def __add__(self, other: WarmupPlan) -> WarmupPlan:
        return WarmupPlan(self.first + other.first, self.rest + other.rest)

    def run(self) -> None:
        for task in self.first + self.rest:
            task()


def _is_first(shape: StepShape, width: int, shapes) -> bool:
    """A lone request's layouts: one prefill slot (any bucket) or the smallest decode bucket."""
    if width != shapes.table_widths[0]:
        return False
    if shape.prefill_slots:
        return shape.decode_slots == 0 and shape.prefill_slots == 1
    return shape.short_q_len == 1 and shape.decode_slots == shapes.decode_buckets[0]


def runner_plan(runner, shapes, examples: list[Sequence] = (), model_only: bool = False) -> WarmupPlan:
    """Tasks building runner's programs for every reachable layout.

    examples: request kinds whose sampler programs to build besides greedy (warm-up compiles the
      sampler per set of enabled stages, sampler/pipeline.py; without this e.g. the server's
      default sampling or a grammar mask would compile on the first batch of each size holding one).
    model_only: a draft model runs the model over the target's batches but samples only its own
      decode steps, so it builds sampling for those alone.
    """
    plan = WarmupPlan()
    first_width = shapes.table_widths[0]

    def model_task(shape: StepShape, width: int) -> Task:
        def task() -> None:
            inputs = pack_step([], shapes, shape=shape, width=width)
            logits = runner.prepare_model(inputs.batch)
            if model_only and (shape.prefill_slots or shape.short_q_len > 1):
                return
            runner.prepare_sampler(logits, inputs.sampling, inputs.sample_rows)
            if inputs.verify_sampling is not None and not model_only:
                runner.prepare_verifier(logits, inputs.verify_sampling, inputs.judged)
        return task

    def sampling_task(example: Sequence, shape: StepShape) -> Task:
        def task() -> None:
            rows, verify = shape.sample_rows, shape.verify_rows
            # The logits' layout is the model pass's (built already, or here: never twice).
            logits = runner.prepare_model(pack_step([], shapes, shape=shape, width=first_width).batch)
            runner.prepare_sampler(logits, build_sampling([example] * rows, rows, shapes), rows)
            if verify and example.grammar is None:   # constrained rows never speculate
                k = shapes.verify_q - 1
                row_seqs, offsets, judged = verify_rows([example] * (verify // (k + 1)),
                                                        [[0] * k] * (verify // (k + 1)), verify)
                runner.prepare_verifier(logits, build_sampling(row_seqs, verify, shapes,
                                                               step_offsets=offsets), judged)
        return task

    for width in shapes.table_widths:
        for shape in shapes.step_shapes():
            (plan.first if _is_first(shape, width, shapes) else plan.rest).append(model_task(shape, width))
    if not model_only:
        by_layout: dict[tuple[int, int], StepShape] = {}   # one shape per logits layout, first ones first
        for shape in sorted(shapes.step_shapes(), key=lambda s: not _is_first(s, first_width, shapes)):
            by_layout.setdefault((shape.sample_rows, shape.verify_rows), shape)
        for example in examples:
            for shape in by_layout.values():
                # Constrained kinds are left to the background: each is one more sampler program
                # on a first request's path, and most first requests are unconstrained.
                first = _is_first(shape, first_width, shapes) and example.grammar is None
                (plan.first if first else plan.rest).append(sampling_task(example, shape))
    return plan


def example_sequence(params, grammar=None) -> Sequence:
    """A stand-in sequence that packs as a request with these params (and grammar) would."""
    return Sequence(seq_id=-1, request_id="warmup", index=0, prompt_ids=[0], params=params, seed=0,
                    metrics=RequestMetrics(arrival_s=0.0), grammar=grammar)

