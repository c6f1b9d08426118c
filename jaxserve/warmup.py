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

from jaxserve.step_inputs import pack_step

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
