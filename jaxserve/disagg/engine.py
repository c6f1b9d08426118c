"""DisaggregatedEngine: prefill and decode on separate meshes in one process, Engine's interface.

Life of a request:
  1. add_request() registers it and passes it to the prefill Engine (prefill mesh), under a lock
     the prefill thread also holds while it steps.
  2. The prefill thread steps its Engine: prompt chunks, then the first token, which is emitted
     at once (TTFT is set by prefill, not by the copy).
  3. The prefill Engine hands the sequence off: KVTransfer gathers exactly its pages and
     device_puts them onto the decode mesh; the prefill side releases its pages (they stay in
     its prefix cache until evicted).
  4. Deltas and hand-offs travel in ONE ordered queue, so a client never sees token 2 before 1.
  5. step() (the caller's thread: AsyncEngine or LLM) drains that queue, scatters arriving pages
     into the decode pools (or, if the decode pool is full, re-prefills the sequence locally),
     and steps the decode Engine. The two loops run concurrently on their own devices.
A failure in the prefill thread fails every request it holds, loudly; nothing hangs.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading

from jaxserve.config import EngineConfig
from jaxserve.disagg.kv_transfer import KVPayload, KVTransfer
from jaxserve.engine import Engine
from jaxserve.model.arch import ModelArch
from jaxserve.outputs import EngineStats, FinishReason, SequenceDelta
from jaxserve.page_table import OutOfPages
from jaxserve.sampling_params import SamplingParams
from jaxserve.sequence import SeqStatus, Sequence
from jaxserve.sharding import kv_sharding, make_mesh
from jaxserve.tokenizer import IncrementalDetokenizer, Tokenizer
from jaxserve.warmup import WarmupPlan

log = logging.getLogger(__name__)


class DisaggregatedEngine:
    def __init__(self, config: EngineConfig, arch: ModelArch, params, tokenizer: Tokenizer,
                 model_name: str = "model"):
        self.config = config
        self.arch = arch
        self.tokenizer = tokenizer
        self.model_name = model_name
        d = config.disagg
        self.prefill_mesh, self.decode_mesh = make_mesh(d.prefill_devices), make_mesh(d.decode_devices)
        # The prefill side never decodes, so speculation belongs to the decode side alone.
        no_spec = dataclasses.replace(config, speculative=dataclasses.replace(config.speculative, method="none"))
        self.prefill = Engine(no_spec, arch, params, tokenizer, model_name, mesh=self.prefill_mesh)
        self.decode = Engine(config, arch, params, tokenizer, model_name, mesh=self.decode_mesh)
        self.max_model_len = self.decode.max_model_len
        self.transfer = KVTransfer(kv_sharding(self.decode_mesh, arch.num_kv_heads))
        self.prefill.handoff = self._on_prefilled
        self.grammars = self.prefill.grammars   # a sequence carries its grammar state to decode
        self.requests: dict[str, list[Sequence]] = {}
        self._events: queue.Queue = queue.Queue()    # ("delta", SequenceDelta) | ("handoff", ...)
        self._lock = threading.Lock()                # guards self.prefill
        self._work = threading.Condition(self._lock)
        self._stop = False
        self._error: BaseException | None = None
        self._recomputed = 0
        self._thread = threading.Thread(target=self._prefill_loop, name="jaxserve-prefill", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------- Engine interface
    def validate_request(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.decode.validate_request(prompt_token_ids, params)
        self.prefill.validate_request(prompt_token_ids, params)

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    prompt: str | None = None) -> None:
        if self._error is not None:
            raise RuntimeError(f"prefill worker failed: {self._error!r}")
        self.decode.validate_request(prompt_token_ids, params)
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        with self._work:
            self.prefill.add_request(request_id, prompt_token_ids, params, prompt)
            self.requests[request_id] = list(self.prefill.requests[request_id])
            self._work.notify()

    def abort_request(self, request_id: str) -> list[SequenceDelta]:
        with self._lock:
            deltas = self.prefill.abort_request(request_id)
        deltas += self.decode.abort_request(request_id)
        for seq in self.requests.pop(request_id, []):
            if not seq.finished:           # in transit between the two sides
                seq.finish_reason, seq.status = FinishReason.ABORT, SeqStatus.FINISHED
        return deltas

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def step(self) -> list[SequenceDelta]:
        if self._error is not None:
            raise RuntimeError(f"prefill worker failed: {self._error!r}")
        deltas = self._drain_events(block=not self.decode.has_unfinished_requests())
        if self.decode.has_unfinished_requests():
            deltas += self.decode.step()
        for rid in [r for r, seqs in self.requests.items() if all(s.finished for s in seqs)]:
            del self.requests[rid]
        return deltas

    def stats(self) -> EngineStats:
        p, d = self.prefill.stats(), self.decode.stats()
        return EngineStats(
            num_running=p.num_running + d.num_running, num_waiting=p.num_waiting + d.num_waiting,
            kv_pages_used=d.kv_pages_used, kv_pages_total=d.kv_pages_total,
            prefix_cache_queries=p.prefix_cache_queries + d.prefix_cache_queries,
            prefix_cache_hits=p.prefix_cache_hits + d.prefix_cache_hits,
            num_preemptions=p.num_preemptions + d.num_preemptions,
            prompt_tokens_total=p.prompt_tokens_total,
            generation_tokens_total=p.generation_tokens_total + d.generation_tokens_total,
            program_count=p.program_count + d.program_count,
            compile_count=p.compile_count + d.compile_count,
            programs_loaded=p.programs_loaded + d.programs_loaded,
            compile_time_s=p.compile_time_s + d.compile_time_s,
            spec_proposed_tokens=d.spec_proposed_tokens, spec_accepted_tokens=d.spec_accepted_tokens,
            kv_transfer_bytes=self.transfer.bytes_total, kv_transfers=self.transfer.transfers)

    def debug_state(self) -> dict:
        """Both sides' dashboard snapshots (engine_state.py) and the KV hand-offs between them."""
        with self._lock:
            prefill = self.prefill.debug_state("prefill")
        decode = self.decode.debug_state("decode")
        t = self.transfer
        return {"role": "disaggregated", "engines": [prefill, decode],
                "kv_transfer": {"transfers": t.transfers, "bytes_total": t.bytes_total,
                                "recent_s": t.seconds[-256:],
                                "handoffs_queued": self._events.qsize()}}

    def warmup(self) -> None:
        self.warmup_plan().run()

    def warmup_plan(self) -> WarmupPlan:
        """Both sides' programs; the KV transfer's gather/scatter (which run on the pools) first."""
        def transfer() -> None:
            with self._lock:
                self.decode.runner.kv = self.transfer.warmup(
                    self.prefill.runner.kv, self.decode.runner.kv, self.decode.shapes.max_pages_per_seq)
        return self.prefill.warmup_plan() + self.decode.warmup_plan() + WarmupPlan(first=[transfer])

    def shutdown(self) -> None:
        with self._work:
            self._stop = True
            self._work.notify()
        self._thread.join(timeout=10)

    # ------------------------------------------------------------------------ prefill side
    def _prefill_loop(self) -> None:
        try:
            while True:
                with self._work:
                    while not self._stop and not self.prefill.has_unfinished_requests():
                        self._work.wait()
                    if self._stop:
                        return
                    self._handoffs: list = []
                    deltas = self.prefill.step()
                    handoffs = self._handoffs
                for d in deltas:
                    self._events.put(("delta", d))
                for h in handoffs:
                    self._events.put(("handoff", h))
        except BaseException as e:  # fail loudly: every waiting client gets an error
            log.exception("prefill worker died")
            self._error = e
            self._events.put(("error", e))

    def _on_prefilled(self, seq: Sequence, detok: IncrementalDetokenizer) -> None:
        """Called inside prefill.step(): start the copy, free the prefill pages, queue the rest."""
        payload = self.transfer.send(self.prefill.runner.kv, seq.pages)
        # Safe to release now: later prefill steps are ordered after the gather on the device.
        self.prefill.scheduler.allocator.release(seq.pages)
        seq.pages = []
        self._handoffs.append((seq, detok, payload))

    # ------------------------------------------------------------------------- decode side
    def _drain_events(self, block: bool) -> list[SequenceDelta]:
        deltas = []
        try:
            event = self._events.get(timeout=0.01) if block else self._events.get_nowait()
            while True:
                kind, *rest = event
                if kind == "delta":
                    deltas.append(rest[0])
                elif kind == "handoff":
                    self._adopt(*rest[0])
                else:
                    raise RuntimeError(f"prefill worker failed: {rest[0]!r}")
                event = self._events.get_nowait()
        except queue.Empty:
            pass
        return deltas

    def _adopt(self, seq: Sequence, detok: IncrementalDetokenizer, payload: KVPayload) -> None:
        if seq.finished:                          # aborted while in transit
            return
        alloc = self.decode.scheduler.allocator
        pages: list[int] = []
        try:
            for _ in range(payload.num_pages):
                pages.append(alloc.allocate())
        except OutOfPages:
            alloc.release(pages)
            self._recomputed += 1
            self.decode.adopt_for_recompute(seq, detok)
            return
        self.decode.runner.kv = self.transfer.receive(self.decode.runner.kv, payload, pages)
        seq.pages = pages
        self.decode.adopt(seq, detok)
