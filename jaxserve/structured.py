"""Structured outputs: a constraint (JSON schema, regex, choice, grammar) -> a per-step token mask.

The grammar engine is llguidance (Rust; JSON schema, regex and Lark/GBNF grammars; a numpy
bitmask API; used by vLLM and llama.cpp): writing our own would buy nothing.

    StructuredOutput      what the request asked for (SamplingParams.structured)
      -> GrammarCompiler  text -> a validated, compiled matcher prototype, cached by grammar text;
                          the server compiles on its tokenizer threads, so the engine thread
                          only finds it in the cache
      -> GrammarState     one per sequence (a deep copy of the prototype): the packed bitmask
                          row of the tokens allowed next, and the token actually sampled
      -> sampler/         its grammar_mask stage packs the rows' bitmasks and applies them to the
                          logits before penalties, temperature and filters; EOS is in the mask
                          only where the grammar may end

Rows without a constraint pay nothing: the sampler's mask stage is compiled in only for batches
that hold a constrained row. Constrained sequences decode plainly (never speculatively).
"""
from __future__ import annotations

import collections
import json
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

# Compiled grammars kept: a server sees the same few schemas over and over.
_CACHE_SIZE = 256
_JSON_OPTIONS = {"whitespace_flexible": False}


@dataclass(frozen=True)
class StructuredOutput:
    """A decoding constraint: exactly one of the fields is set.

    json: a JSON schema (dict or its JSON text); json_object: any JSON object; regex: a regular
    expression the whole output must match; choice: the output is one of these strings;
    grammar: a Lark (or llama.cpp GBNF) grammar.
    """

    json: Any = None
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None

    def __post_init__(self) -> None:
        given = [name for name in ("json", "regex", "choice", "grammar") if getattr(self, name) is not None]
        given += ["json_object"] if self.json_object else []
        if len(given) != 1:
            raise ValueError(f"structured must set exactly one of json, json_object, regex, choice "
                             f"and grammar, got {given or 'none'}")
        if self.choice is not None and (not self.choice or not all(isinstance(c, str) and c for c in self.choice)):
            raise ValueError("structured.choice must be a non-empty list of non-empty strings")
        if self.regex is not None and not isinstance(self.regex, str):
            raise ValueError("structured.regex must be a string")
        if self.grammar is not None and not isinstance(self.grammar, str):
            raise ValueError("structured.grammar must be a string")

    @property
    def kind(self) -> str:
        return next(name for name in ("json", "regex", "choice", "grammar") if getattr(self, name) is not None) \
            if not self.json_object else "json_object"

    def grammar_text(self) -> str:
        """The llguidance grammar definition; ValueError naming the field if it cannot be built."""
        import llguidance

        try:
            if self.json_object or self.json is not None:
                schema = {"type": "object"} if self.json_object else self.json
                schema = schema if isinstance(schema, str) else json.dumps(schema)
                # Compact JSON: free whitespace lets a model pad with spaces until max_tokens.
                return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
            if self.regex is not None:
                return llguidance.grammar_from("regex", self.regex)
            if self.choice is not None:
                return llguidance.grammar_from("choice", json.dumps(list(self.choice)))
            return llguidance.grammar_from("grammar", self.grammar)
        except ValueError as e:
            raise ValueError(f"structured.{self.kind} is not valid: {e}") from None


class GrammarCompiler:
    """Compiles constraints for one tokenizer; thread-safe, cached by grammar text.

    Args:
        tokenizer: jaxserve.tokenizer.Tokenizer (its `tokenizers` backend and EOS ids).
    """

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer
        self._lock = threading.Lock()
        self._ll_tokenizer = None
        self._cache: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self.vocab_size = tokenizer.vocab_size

    def _ll(self):
        import llguidance

        with self._lock:
            if self._ll_tokenizer is None:   # ~1 s for a 50k vocabulary: once per process
                self._ll_tokenizer = llguidance.LLTokenizer(
                    self._tokenizer.backend.to_str(), n_vocab=self.vocab_size,
                    eos_token=sorted(self._tokenizer.eos_token_ids))
            return self._ll_tokenizer

    def compile(self, spec: StructuredOutput) -> Any:
        """A compiled matcher prototype for spec; ValueError naming the field when it is invalid."""
        import llguidance

        text = spec.grammar_text()
        with self._lock:
            proto = self._cache.get(text)
            if proto is not None:
                self._cache.move_to_end(text)
                return proto
        tokenizer = self._ll()
        proto = llguidance.LLMatcher(tokenizer, text, log_level=0)
        if proto.is_error():
            raise ValueError(f"structured.{spec.kind} is not valid: {_first_line(proto.get_error())}")
        with self._lock:
            self._cache[text] = proto
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return proto

    def state(self, spec: StructuredOutput) -> "GrammarState":
        return GrammarState(self.compile(spec).deep_copy(), self.vocab_size)

    def state_after(self, spec: StructuredOutput, tokens: list[int]) -> "GrammarState":
        """A fresh state for spec advanced over tokens already emitted (a sequence continued
        in another process). ValueError naming output_ids when the grammar would not have
        allowed them, or when they already complete it (nothing could follow).
        """
        state = self.state(spec)
        for i, token in enumerate(tokens):
            if state.matcher.is_stopped() or not state.matcher.consume_token(token):
                raise ValueError(f"output_ids[{i}] = {token} is not allowed by structured.{spec.kind} "
                                 f"after the tokens before it")
        if tokens and state.matcher.is_stopped():
            raise ValueError(f"output_ids already complete structured.{spec.kind}: nothing may follow")
        return state


def _first_line(message: str, limit: int = 300) -> str:
    line = message.strip().splitlines()[0] if message.strip() else "invalid grammar"
    return line[:limit]


class GrammarState:
    """One sequence's position in its grammar."""

    def __init__(self, matcher: Any, vocab_size: int):
        self.matcher = matcher
        self.vocab_size = vocab_size

    @property
    def mask_words(self) -> int:
        return (self.vocab_size + 31) // 32

    def fill_mask(self, row: np.ndarray) -> None:
        """Write the packed bitmask of the tokens allowed next into row (i32[W], contiguous)."""
        self.matcher.unsafe_compute_mask_ptr(row.ctypes.data, row.size * row.itemsize)

    def advance(self, token: int) -> bool:
        """Consume the sampled token; True when the grammar is finished (nothing may follow)."""
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"the grammar rejected token {token}: {_first_line(self.matcher.get_error())}")
        return self.matcher.is_stopped()

    def copy(self) -> "GrammarState":
        return GrammarState(self.matcher.deep_copy(), self.vocab_size)


def pack_token_masks(states: list[GrammarState | None], rows: int) -> np.ndarray | None:
    """i32[rows, W] bitmasks (all ones for unconstrained and padding rows); None when no row is constrained."""
    constrained = [s for s in states if s is not None]
    if not constrained:
        return None
    masks = np.full((rows, constrained[0].mask_words), -1, np.int32)
    for i, state in enumerate(states):
        if state is not None:
            state.fill_mask(masks[i])
    return masks
