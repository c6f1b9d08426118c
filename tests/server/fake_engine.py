"""A fake Engine with hand-computable outputs, for server tests that need no model.

FakeTokenizer is byte-level: ids 0..255 are bytes, 256 is EOS, 257 is BOS. FakeEngine implements
the Engine interface (add_request, abort_request, step, has_unfinished_requests, stats, warmup):
each step admits waiting requests up to scheduler.max_num_seqs sequences and gives every running
sequence one token. A greedy sequence's next token is `next_greedy(last)` (lowercase letters, a
space every sixth token), so tests can compute the exact text; a seeded sampled sequence uses
random.Random(seed, index). KV pages are counted as ceil(tokens / page_size) per sequence, so
/metrics shows pages being used and freed. A prompt containing CRASH makes step() raise.
"""
from __future__ import annotations

import math
import random
import time
from collections import deque
from dataclasses import dataclass, field

from jaxserve.admission import check_request
from jaxserve.config import EngineConfig
from jaxserve.outputs import EngineStats, FinishReason, SequenceDelta, TokenLogprob
from jaxserve.sampling_params import SamplingParams
from jaxserve.warmup import WarmupPlan

EOS, BOS = 256, 257
CRASH = "CRASH"


class FakeTokenizer:
    vocab_size = 258
    max_token_chars = 5   # "<bos>" / "<eos>"; every other token is one byte
    eos_token_ids = {EOS}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([BOS] if add_special_tokens else []) + list(text.encode("utf-8"))

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        out = []
        for t in ids:
            if t < 256:
                out.append(bytes([t]).decode("utf-8", errors="replace"))
            elif not skip_special_tokens:
                out.append("<eos>" if t == EOS else "<bos>")
        return "".join(out)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")


def next_greedy(last: int, position: int) -> int:
    """The greedy token after `last`, at output position `position` (0-based)."""
    if position % 6 == 5:
        return ord(" ")
    return ord("a") + (last * 31 + 7) % 26


def greedy_text(prompt_ids: list[int], num_tokens: int) -> str:
    """The text a greedy request with this prompt produces in num_tokens tokens."""
    last, out = prompt_ids[-1], []
    for pos in range(num_tokens):
        last = next_greedy(last, pos)
        out.append(chr(last))
    return "".join(out)


@dataclass
class _Seq:
    request_id: str
    index: int
    prompt_ids: list[int]
    params: SamplingParams
    rng: random.Random
    out_ids: list[int] = field(default_factory=list)
    text: str = ""            # decoded output, including text held back for a possible stop string
    sent: int = 0             # characters of text already delivered
    finished: bool = False

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.out_ids)


class FakeEngine:
    def __init__(self, config: EngineConfig, step_s: float = 0.0):
        self.config = config
        self.tokenizer = FakeTokenizer()
        self.model_name = config.model.served_model_name or "fake-model"
        self.max_model_len = config.model.max_model_len
        self.grammars = None
        self.step_s = step_s
        self.waiting: deque[list[_Seq]] = deque()
        self.running: list[_Seq] = []
        self._stats = EngineStats(kv_pages_total=config.cache.num_pages - 1)
        self.num_steps = 0

    def warmup(self) -> None:
        self.warmup_plan().run()

    def warmup_plan(self) -> WarmupPlan:
        def build() -> None:
            self._stats.program_count = self._stats.compile_count = 2
            self._stats.compile_time_s = 0.01
        return WarmupPlan(first=[build])

    def validate_request(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        check_request(prompt_token_ids, params, max_model_len=self.max_model_len)

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    prompt: str | None = None) -> None:
        self.validate_request(prompt_token_ids, params)
        if any(s.request_id == request_id for s in self._all()):
            raise ValueError(f"request_id must be unique, got {request_id!r}")
        base = params.seed if params.seed is not None else random.randrange(1 << 30)
        self.waiting.append([_Seq(request_id, i, list(prompt_token_ids), params,
                                  random.Random(base * 1000 + i)) for i in range(params.n)])

    def abort_request(self, request_id: str) -> None:
        self.running = [s for s in self.running if s.request_id != request_id]
        self.waiting = deque(g for g in self.waiting if g[0].request_id != request_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self.running or self.waiting)

    def step(self) -> list[SequenceDelta]:
        self.num_steps += 1
        if self.step_s:
            time.sleep(self.step_s)
        while self.waiting and len(self.running) + len(self.waiting[0]) <= self.config.scheduler.max_num_seqs:
            group = self.waiting.popleft()
            if any(CRASH.encode() in bytes(t for t in s.prompt_ids if t < 256) for s in group):
                raise RuntimeError("fake engine crashed on purpose")
            self.running.extend(group)
            self._stats.prompt_tokens_total += len(group[0].prompt_ids)
        deltas = [self._advance(s) for s in self.running]
        self.running = [s for s in self.running if not s.finished]
        return deltas

    def stats(self) -> EngineStats:
        s = self._stats
        s.num_running = len(self.running)
        s.num_waiting = len(self.waiting)
        page = self.config.cache.page_size
        s.kv_pages_used = sum(math.ceil(q.num_tokens / page) for q in self.running)
        return EngineStats(**vars(s))

    def _all(self) -> list[_Seq]:
        return self.running + [s for g in self.waiting for s in g]

    def _advance(self, s: _Seq) -> SequenceDelta:
        p = s.params
        pos = len(s.out_ids)
        last = s.out_ids[-1] if s.out_ids else s.prompt_ids[-1]
        if p.temperature == 0:
            token = next_greedy(last, pos)
        else:
            token = ord(" ") if pos % 6 == 5 else ord("a") + s.rng.randrange(26)
        s.out_ids.append(token)
        self._stats.generation_tokens_total += 1
        reason = None
        if token in p.stop_token_ids or (token == EOS and not p.ignore_eos):
            reason = FinishReason.STOP
        else:
            s.text += self.tokenizer.decode([token], p.skip_special_tokens)
        cut = min((s.text.find(x) for x in p.stop if x in s.text), default=-1)
        if cut >= 0:
            s.text, reason = s.text[:cut], FinishReason.STOP
        if reason is None and (len(s.out_ids) >= p.max_tokens
                               or s.num_tokens >= self.config.model.max_model_len):
            reason = FinishReason.LENGTH
        # Hold back a tail that could still grow into a stop string.
        hold = 0 if reason else max((k for x in p.stop for k in range(1, len(x))
                                     if s.text.endswith(x[:k])), default=0)
        new_text = s.text[s.sent:len(s.text) - hold]
        s.sent += len(new_text)
        s.finished = reason is not None
        logprobs = None
        if p.logprobs is not None:
            top = [((token + k) % 256, -0.5 - k) for k in range(p.logprobs)]
            logprobs = [TokenLogprob(token_id=token, logprob=-0.5, top=top)]
        return SequenceDelta(request_id=s.request_id, index=s.index, token_ids=[token], text=new_text,
                             logprobs=logprobs, finish_reason=reason,
                             num_prompt_tokens=len(s.prompt_ids))
