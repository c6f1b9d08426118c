"""Engine: add_request / step / abort, tying scheduler, step inputs, runner and outputs together.

engine.step():
  lookahead = speculation.lookahead()        whether and how far to propose drafts (spec/controller.py)
  plan   = scheduler.schedule(lookahead)     decode slots + prefill chunks (host)
  inputs = step_inputs.pack_step(work)       decodes, verifies and chunks in one padded batch (host)
  launch = runner.launch(inputs)             one model pass, sampling + verification (device), dispatched
  read back the step before                  its copy to the host; stop checks, detokenize
                                             (output_processor.py); finished sequences come back
                                             through _finished, which frees pages
With asynchronous scheduling (scheduler.async_scheduling) a step stays in flight while the next
is planned and dispatched, so the host's work overlaps the device's (inflight.py); without it,
or when a row needs its tokens known first, each step is read back at once.
Not thread-safe: one thread drives it (AsyncEngine for the server, LLM for the Python API).
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import jax.numpy as jnp

from jaxserve.admission import check_request
from jaxserve.config import EngineConfig
from jaxserve.engine_state import EngineHistory, engine_snapshot
from jaxserve.errors import QueueFull
from jaxserve.inflight import InFlightStep, drop_unresolved, expect_token, must_read_first, resolve_token
from jaxserve.model.arch import ModelArch
from jaxserve.model.attention import AttentionOptions
from jaxserve.output_processor import OutputProcessor, delta
from jaxserve.outputs import EngineStats, FinishReason, RequestMetrics, SequenceDelta
from jaxserve.runner import ModelRunner
from jaxserve.sampler import PackTimes
from jaxserve.sampling_params import SamplingParams, short_repr
from jaxserve.sampling_defaults import served_defaults
from jaxserve.scheduler import Scheduler
from jaxserve.seeds import fold_seed, request_seed, sample_seed
from jaxserve.sequence import Sequence
from jaxserve.spec.controller import SpeculationController
from jaxserve.spec.verify import accepted_tokens
from jaxserve.step_inputs import Shapes, StepInputs, Work, bucket, pack_step
from jaxserve.structured import GrammarCompiler, GrammarState, StructuredOutput
from jaxserve.tokenizer import IncrementalDetokenizer, Tokenizer
from jaxserve.warmup import WarmupPlan, example_sequence, runner_plan
from pallas_kernels.dispatch import reads_whole_table

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, config: EngineConfig, arch: ModelArch, params, tokenizer: Tokenizer,
                 model_name: str = "model", mesh=None):
        self.config = config
        self.arch = arch
        self.tokenizer = tokenizer
        self.model_name = model_name
        cache, sched = config.cache, config.scheduler
        self.max_model_len = min(config.model.max_model_len, arch.max_position)
        max_prefill_seqs = sched.max_prefill_seqs
        # No one-row decode program: XLA lowers a one-row K/V write in the layer loop to an update
        # that copies the whole pools every layer (seconds per step with thousands of pages);
        # a single sequence is padded to two rows instead.
        decode_buckets = tuple(b for b in sched.decode_buckets if b >= 2) or (2,)
        spec_tokens = config.speculative.num_speculative_tokens if config.speculative.method != "none" else 0
        # Verify batches hold at most min(max_batch_for_speculation, max_num_seqs) sequences:
        # only their buckets can occur, so only those are warmed up.
        most = min(config.speculative.max_batch_for_speculation, sched.max_num_seqs)
        verify_buckets = tuple(sorted({bucket(n, decode_buckets) for n in range(1, most + 1)})
                               ) if spec_tokens else ()
        self.shapes = Shapes(
            page_size=cache.page_size, max_pages_per_seq=-(-self.max_model_len // cache.page_size),
            decode_buckets=decode_buckets, prefill_buckets=tuple(sched.prefill_buckets),
            max_prefill_seqs=max_prefill_seqs, history_len=self.max_model_len,
            spec_tokens=spec_tokens, verify_buckets=verify_buckets,
            mixed_decode_slots=bucket(sched.max_num_seqs, decode_buckets),
            single_table_width=not reads_whole_table(config.kernel.attention_impl, config.kernel.interpret))
        self.scheduler = Scheduler(sched, cache, max_prefill_seqs)
        self.runner = ModelRunner(arch, params, cache.num_pages, cache.page_size,
                                  jnp.dtype(config.model.dtype),
                                  AttentionOptions(config.kernel.attention_impl, config.kernel.interpret),
                                  mesh=mesh, bf16_matmuls=config.model.matmul_dtype == "bfloat16",
                                  kv_dtype=None if cache.dtype == "auto" else jnp.dtype(cache.dtype),
                                  feed_rows=max(s.sample_rows for s in self.shapes.step_shapes()))
        # Disaggregated prefill side: called with each sequence whose prompt is done and whose
        # first token is out; the callee copies its pages away and must release them here.
        self.handoff: Callable[[Sequence, IncrementalDetokenizer], None] | None = None
        proposer = self._make_proposer(config)
        self.speculation = (SpeculationController(proposer, config.speculative, sched.max_num_seqs,
                                                  self.max_model_len) if proposer is not None else None)
        # Drafts are proposed from the tokens themselves, so speculation reads every step back.
        self.async_scheduling = sched.async_scheduling and self.speculation is None
        self._in_flight: InFlightStep | None = None
        self.steps_overlapped = 0   # steps left in flight while the next was planned (tests, metrics)
        self.verify_buckets = verify_buckets
        self.grammars = GrammarCompiler(tokenizer)   # structured outputs; thread-safe (the server compiles too)
        self.sampler_times = PackTimes()             # host seconds per sampler stage (grammar masks: metrics)
        self.history = EngineHistory()               # the last steps and finished requests (dashboard)
        self.requests: dict[str, list[Sequence]] = {}
        self.outputs = OutputProcessor(tokenizer, self.max_model_len, on_finish=self._finished)
        self._next_seq_id = 0
        self._num_requests = 0
        self.prompt_tokens_total = 0

    def _make_proposer(self, config: EngineConfig):
        spec = config.speculative
        if spec.method == "ngram":
            from jaxserve.spec.ngram import NgramProposer
            return NgramProposer(spec.ngram_max, spec.ngram_min)
        if spec.method == "draft":
            from jaxserve.loading import load_draft
            from jaxserve.spec.draft import DraftModelProposer
            arch, params = load_draft(config, self.arch.vocab_size)
            runner = ModelRunner(arch, params, config.cache.num_pages, config.cache.page_size,
                                 jnp.dtype(spec.draft_dtype), self.runner.opts)
            return DraftModelProposer(runner, self.shapes)
        return None

    # ------------------------------------------------------------------------------ requests
    def validate_request(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise ValueError naming the field if the request can never be served."""
        check_request(prompt_token_ids, params, max_model_len=self.max_model_len,
                      vocab_size=self.arch.vocab_size,
                      kv_capacity_tokens=self.scheduler.allocator.num_usable * self.config.cache.page_size)

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    prompt: str | None = None) -> None:
        self.validate_request(prompt_token_ids, params)
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        if len(self.scheduler.waiting) >= self.config.scheduler.max_waiting:
            raise QueueFull(f"{len(self.scheduler.waiting)} requests are waiting "
                            f"(scheduler.max_waiting = {self.config.scheduler.max_waiting})")
        base_seed = request_seed(params.seed, self.config.seed, self._num_requests)
        self._num_requests += 1
        max_tokens = min(params.max_tokens, self.max_model_len - len(prompt_token_ids))
        if max_tokens != params.max_tokens:
            params = params.replace(max_tokens=max_tokens)
        if params.top_k >= self.arch.vocab_size:   # the whole vocabulary: no filter (as vLLM)
            params = params.replace(top_k=0)
        metrics = RequestMetrics(arrival_s=time.perf_counter())
        # Compiled already when the server checked the request (a cache hit here); ValueError if invalid.
        grammar = self.grammars.state(params.structured) if params.structured is not None else None
        seqs = []
        for i in range(params.n):
            seq = Sequence(seq_id=self._next_seq_id, request_id=request_id, index=i,
                           prompt_ids=list(prompt_token_ids), params=params,
                           seed=sample_seed(base_seed, i),
                           metrics=metrics if i == 0 else RequestMetrics(arrival_s=metrics.arrival_s),
                           grammar=grammar.copy() if grammar is not None else None)
            self._next_seq_id += 1
            self.outputs.open(seq)
            self.scheduler.add(seq)
            seqs.append(seq)
        self.requests[request_id] = seqs
        self.prompt_tokens_total += len(prompt_token_ids)

    def abort_request(self, request_id: str) -> list[SequenceDelta]:
        """Cancel a request; its pages are released at once."""
        return self._end_request(request_id, FinishReason.ABORT)

    def _end_request(self, request_id: str, reason: FinishReason, error: str | None = None
                     ) -> list[SequenceDelta]:
        deltas = []
        for seq in self.requests.pop(request_id, []):
            drop_unresolved(seq)
            if not seq.finished:
                seq.finish_reason = reason
                self.scheduler.finish(seq)
                deltas.append(delta(seq, [], "", None, error=error))
            self.outputs.close(seq)
        return deltas

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # ---------------------------------------------------------------------------------- step
    def step(self) -> list[SequenceDelta]:
        """One scheduling step: plain decodes, verifies and prefill chunks in one model pass.

        Returns the deltas of the step read back during this call: the one before (in flight
        while this one was planned and dispatched) or, when a step may not stay in flight, this
        one. Host work that depends on one request's own values (packing its row, appending and
        detokenizing its token, its stop strings) is isolated: if it raises, that request ends
        with FinishReason.ERROR and the step goes on for the others. A failure of the model step
        itself is not any one request's: it propagates, and the caller fails everything.
        """
        start_s, programs = time.perf_counter(), self.runner.compiles.count
        deltas: list[SequenceDelta] = []
        lookahead = self.speculation.lookahead(self.scheduler) if self.speculation else None
        plan = self.scheduler.schedule(lookahead)
        work, inputs = self._pack(self._work(plan), deltas)
        launched = self._launch(inputs) if work else None
        if self._in_flight is not None:
            deltas += self._read_back(self._take_in_flight())
        if launched is not None:
            if self._may_stay_in_flight(launched):
                self._in_flight = launched
                self.steps_overlapped += 1
            else:
                deltas += self._read_back(launched)
        self.history.record_step(start_s, plan, self.runner.compiles.count - programs)
        return deltas

    def _may_stay_in_flight(self, step: InFlightStep) -> bool:
        # Decided once, at dispatch: nothing it depends on changes while the step is in flight.
        return self.async_scheduling and self.handoff is None and not must_read_first(step)

    def _take_in_flight(self) -> InFlightStep:
        step, self._in_flight = self._in_flight, None
        return step

    def _launch(self, inputs: StepInputs) -> InFlightStep:
        """Dispatch a step; record it in its sequences as if it had run (inflight.py)."""
        fed = self._in_flight.launched.feed if self._in_flight is not None else None
        launched = self.runner.launch(inputs, fed)
        emits = [w.chunk is None or w.chunk.completes_prompt for w in inputs.sampled]
        for row, (w, emit) in enumerate(zip(inputs.sampled, emits)):
            self.scheduler.advance(w.seq, w.start + (w.chunk.length if w.chunk else 1))
            if emit:
                expect_token(w.seq, row)
        return InFlightStep(inputs, launched, emits)

    def _read_back(self, step: InFlightStep) -> list[SequenceDelta]:
        """A dispatched step's tokens, each through the output processor (stop checks, text)."""
        sampled, verified = step.launched.fetch()
        inputs = step.inputs
        if self.speculation:
            self.speculation.observe(inputs.batch)
        deltas: list[SequenceDelta] = []
        plain = [w for w in inputs.sampled if w.chunk is None]
        for i, w in enumerate(plain):
            deltas += self._take_token(w.seq, sampled, i)
        if inputs.verified:
            deltas += self._apply_verify(inputs.verified, verified)
        for i, w in enumerate(inputs.sampled[len(plain):], start=len(plain)):
            if step.emits[i]:
                deltas += self._take_token(w.seq, sampled, i)
                if self.handoff is not None and not w.seq.finished:
                    self._hand_off(w.seq)
        return deltas

    def _take_token(self, seq: Sequence, sampled, row: int) -> list[SequenceDelta]:
        """Row `row`'s token replaces seq's oldest placeholder, unless seq ended after the step
        was dispatched (on the step before's token, an abort, a failed sibling): then it is dropped."""
        if seq.finished:
            return []
        deltas = self._isolated(seq, lambda: [resolve_token(
            seq, lambda: self.outputs.append_sampled(seq, sampled, row))])
        if not seq.finished:
            self.scheduler.publish(seq)   # pages that waited for this token's value
        return deltas

    def _work(self, plan) -> list[Work]:
        """The plan's rows: each decode with its proposal (if any), then the prefill chunks."""
        drafts = (self.speculation.propose(plan.decodes, plan.spec_lens) if self.speculation
                  else [None] * len(plan.decodes))
        # A decode whose pending token is still in flight reads it on the device (inflight.py).
        return ([Work(s, draft=d, feed=s.feed_row if s.num_unresolved else -1)
                 for s, d in zip(plan.decodes, drafts)]
                + [Work(c.seq, chunk=c) for c in plan.prefills])

    def _pack(self, work: list[Work], deltas: list[SequenceDelta]) -> tuple[list[Work], StepInputs | None]:
        """pack_step(work); rows whose own values make packing raise fail alone.

        Returns the rows kept (possibly none) and the step inputs for them.
        """
        try:
            return work, pack_step(work, self.shapes, times=self.sampler_times)
        except Exception:  # noqa: BLE001 - find the culprit(s) by packing each row alone
            kept = []
            for w in work:
                try:
                    pack_step([w], self.shapes)   # untimed: a probe, not a step's packing
                except Exception as e:  # noqa: BLE001
                    deltas += self.fail_request(w.seq.request_id, e)
                else:
                    kept.append(w)
            kept = [w for w in kept if not w.seq.finished]
            return kept, pack_step(kept, self.shapes, times=self.sampler_times) if kept else None

    def _isolated(self, seq: Sequence, work: Callable[[], list[SequenceDelta]]) -> list[SequenceDelta]:
        """Run one sequence's host work; if it raises, only its request fails."""
        try:
            return work()
        except Exception as e:  # noqa: BLE001 - one request's failure must not end the step
            return self.fail_request(seq.request_id, e)

    def fail_request(self, request_id: str, error: BaseException) -> list[SequenceDelta]:
        """End a request with FinishReason.ERROR (pages released); its deltas carry the reason."""
        log.error("request %s failed: %r", request_id, error, exc_info=error)
        return self._end_request(request_id, FinishReason.ERROR,
                                 f"{type(error).__name__}: {short_repr(str(error), 300)}")

    # ------------------------------------------------------------------ disaggregated serving
    def _hand_off(self, seq: Sequence) -> None:
        self.scheduler.detach(seq)
        seqs = self.requests.get(seq.request_id, [])
        if seq in seqs:
            seqs.remove(seq)
        if not seqs:
            self.requests.pop(seq.request_id, None)
        self.handoff(seq, self.outputs.close(seq))

    def adopt(self, seq: Sequence, detokenizer: IncrementalDetokenizer) -> None:
        """Continue a sequence prefilled elsewhere: seq.pages already hold its K/V in our pools."""
        self.requests.setdefault(seq.request_id, []).append(seq)
        self.outputs.resume(seq, detokenizer)
        self.scheduler.adopt(seq)

    def adopt_for_recompute(self, seq: Sequence, detokenizer: IncrementalDetokenizer) -> None:
        """Continue a sequence whose K/V could not be taken in: it is prefilled again here."""
        seq.pages, seq.num_computed, seq.num_published = [], 0, 0
        self.requests.setdefault(seq.request_id, []).append(seq)
        self.outputs.resume(seq, detokenizer)
        self.scheduler.add(seq)

    def import_sequence(self, request_id: str, index: int, prompt_ids: list[int], output_ids: list[int],
                        params: SamplingParams, seed: int, pages: list[int] | None = None,
                        grammar: GrammarState | None = None) -> Sequence:
        """Continue a sequence begun in another process, whose output_ids were already emitted.

        Its detokenizer and stop-string state are rebuilt by replaying output_ids, so the next
        text delta continues the emitted text exactly. pages: our pool pages already holding the
        K/V of all but its last token (adopted); None: prefill prompt + output here. grammar:
        params.structured's state already advanced over output_ids (the workers build it off the
        engine thread: GrammarCompiler.state_after); None: built here if the request is constrained.
        """
        if params.structured is not None and grammar is None:
            grammar = self.grammars.state_after(params.structured, output_ids)
        seq = Sequence(seq_id=self._next_seq_id, request_id=request_id, index=index,
                       prompt_ids=list(prompt_ids), params=params, seed=fold_seed(seed),
                       metrics=RequestMetrics(arrival_s=time.perf_counter()), output_ids=list(output_ids),
                       grammar=grammar)
        self._next_seq_id += 1
        detok = self.outputs.replay(seq)
        if pages is None:
            self.prompt_tokens_total += len(prompt_ids)
            self.adopt_for_recompute(seq, detok)
        else:
            seq.pages, seq.num_computed = list(pages), seq.num_tokens - 1
            self.adopt(seq, detok)
        return seq

    def _apply_verify(self, work: list[Work], result) -> list[SequenceDelta]:
        """Append each verified sequence's accepted tokens; tell the controller what was accepted."""
        deltas: list[SequenceDelta] = []
        row, step_accepted, num_verified = 0, 0, 0
        for w in work:
            seq, draft = w.seq, w.draft
            rows = slice(row, row + len(draft) + 1)
            row = rows.stop
            if seq.finished:   # a sibling of a failed request, ended earlier in this step
                continue
            num_verified += 1
            tokens = accepted_tokens(draft, result.accept[rows], result.residual[rows], result.plain[rows])
            self.speculation.record(seq, len(draft), len(tokens) - 1)
            step_accepted += len(tokens) - 1
            start = seq.num_computed
            deltas += self._isolated(seq, lambda: self.outputs.append_tokens(seq, tokens))
            if not seq.finished:
                self.scheduler.advance(seq, start + len(tokens))
                self.scheduler.trim(seq)
        if num_verified:
            self.speculation.end_step(step_accepted, num_verified)
        return deltas

    def _finished(self, seq: Sequence) -> None:
        """The output processor found seq done: free its pages, and its request once all n are."""
        self.scheduler.finish(seq)
        self.history.record_finished(seq)
        seqs = self.requests.get(seq.request_id, [])
        if all(s.finished for s in seqs):
            self.requests.pop(seq.request_id, None)

    # ---------------------------------------------------------------------------- reporting
    def stats(self) -> EngineStats:
        alloc = self.scheduler.allocator
        return EngineStats(
            num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
            kv_pages_used=alloc.num_used, kv_pages_total=alloc.num_usable,
            prefix_cache_queries=alloc.prefix_queries, prefix_cache_hits=alloc.prefix_hits,
            num_preemptions=self.scheduler.num_preemptions,
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.outputs.generation_tokens_total,
            program_count=self.runner.compiles.count, compile_count=self.runner.compiles.compiled,
            programs_loaded=self.runner.compiles.loaded, compile_time_s=self.runner.compiles.seconds,
            spec_proposed_tokens=self.speculation.proposed if self.speculation else 0,
            spec_accepted_tokens=self.speculation.accepted if self.speculation else 0,
            grammar_mask_time_s=self.sampler_times.seconds.get("grammar_mask", 0.0),
            grammar_mask_batches=self.sampler_times.batches.get("grammar_mask", 0))

    def debug_state(self, role: str = "colocated") -> dict:
        """The dashboard's bounded snapshot (engine_state.py); on the engine's thread only."""
        return engine_snapshot(self, role)

    def warmup(self) -> None:
        self.warmup_plan().run()

    def warmup_plan(self) -> WarmupPlan:
        """Tasks building every program a step can reach (warmup.py); none runs the model, so
        `rest` may run on another thread while this engine serves."""
        plan = runner_plan(self.runner, self.shapes, self._sampling_examples())
        proposer = self.speculation.proposer if self.speculation else None
        if proposer is not None and hasattr(proposer, "runner"):
            plan = plan + runner_plan(proposer.runner, self.shapes, model_only=True)
        return plan

    def _sampling_examples(self) -> list[Sequence]:
        """The request kinds whose sampler programs warm-up compiles besides greedy: the server's
        default sampling (fields a request leaves unset: the model's recommendation, else
        llama.cpp's), and both of those under a grammar (structured outputs)."""
        sampled = SamplingParams(**served_defaults(self.tokenizer, self.config), seed=0)
        if sampled.top_k >= self.arch.vocab_size:
            sampled = sampled.replace(top_k=0)   # as add_request does
        greedy = SamplingParams(temperature=0.0)
        grammar = self.grammars.state(StructuredOutput(json_object=True))
        return [example_sequence(sampled), example_sequence(greedy, grammar),
                example_sequence(sampled, grammar)]
