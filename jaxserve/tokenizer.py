"""Text <-> token ids, chat templates, and streaming detokenization.

Takes a GGUF file (llama.cpp metadata: `tokenizer.ggml.*`) or a Hugging Face model directory
(`tokenizer.json` + `tokenizer_config.json`) and gives:

    Tokenizer.encode(text)               str -> list[int]
    Tokenizer.decode(ids)                list[int] -> str
    Tokenizer.apply_chat_template(msgs)  list[{"role", "content"}] -> prompt str
    IncrementalDetokenizer.push(ids)     new ids -> new complete text (for SSE deltas)

The heavy lifting is the `tokenizers` library; from a GGUF we rebuild the byte-level BPE that
llama.cpp would run: vocabulary + merges, the pre-tokenizer named by `tokenizer.ggml.pre`, and
control tokens (`<|im_start|>`, ...) as special tokens so they encode to one id each. A
SentencePiece vocabulary (Gemma's, `tokenizer.ggml.model = "llama"`) is rebuilt by tokenizer_spm.py.
"""
from __future__ import annotations

import datetime
import functools
import json
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as _Backend

from jaxserve import tokenizer_spm
from jaxserve.model.gguf_metadata import read_gguf_metadata
from jaxserve.sampling_defaults import model_defaults

# llama.cpp `llama_token_type` values stored in `tokenizer.ggml.token_type`.
_TOKEN_NORMAL, _TOKEN_CONTROL, _TOKEN_USER_DEFINED = 1, 3, 4

# Tokens that end a turn or a document. They join `eos_token_ids` when the vocabulary has them as
# special tokens: chat models emit the turn end (`<|im_end|>`) and base models the document end
# (`<|endoftext|>`), and llama.cpp stops on either (its "end of generation" set).
_END_OF_GENERATION = (
    "<|im_end|>", "<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "<|eom_id|>",
    "<end_of_turn>", "<|end|>", "<|return|>", "</s>",
)

# `tokenizer.ggml.pre` -> how text is cut before BPE: "gpt2" is the GPT-2 regex that
# ByteLevel(use_regex=True) applies; "digits+gpt2" first isolates every digit (llama.cpp's `\p{N}`
# rule for "smollm" and "starcoder"; SmolLM2's tokenizer.json says Digits(individual_digits=True)
# + ByteLevel); anything else is a split regex (Llama 3's, as llama.cpp writes it).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZERS = {
    "default": "gpt2",
    "gpt2": "gpt2",
    "smollm": "digits+gpt2",
    "starcoder": "digits+gpt2",
    "refact": "digits+gpt2",
    "codeshell": "digits+gpt2",
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
}

# Used only when the model ships no template: ChatML, without a default system prompt.
_FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Gemma's turn format, for Gemma GGUF files that carry no template (the Gemma 3 270M one does not):
# BOS, then user/model turns; the model's role is "model", and a system message is prepended to
# the first user turn, as Gemma's own template does (Gemma has no system role).
_GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = ns.system + message['content'] + '\n\n' %}"
    "{% else %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' }}"
    "{% if message['role'] == 'user' %}{{ ns.system }}{% set ns.system = '' %}{% endif %}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# `general.architecture` -> the template used when the GGUF has none; others get ChatML.
_ARCH_CHAT_TEMPLATES = {"gemma": _GEMMA_CHAT_TEMPLATE, "gemma2": _GEMMA_CHAT_TEMPLATE,
                        "gemma3": _GEMMA_CHAT_TEMPLATE}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table that byte-level vocabularies are spelled in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


_CHAR_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


def _pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    if pre not in _PRE_TOKENIZERS:
        raise ValueError(f"tokenizer.ggml.pre={pre!r} is not supported; known: {sorted(_PRE_TOKENIZERS)}")
    split = _PRE_TOKENIZERS[pre]
    if split == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if split == "digits+gpt2":
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def _read_gguf_fields(path: str | Path) -> dict[str, Any]:
    """The `tokenizer.*` metadata and `general.architecture` of a GGUF file, as plain Python
    values (shared between callers: do not modify).

    Parsing takes about 0.1 s for SmolLM2's 49k tokens and merges (gguf.GGUFReader took 5-7 s,
    see model/gguf_metadata.py); the cache still spares a process that builds several engines
    on one file the repeat. The key includes the file's size and mtime: a file rewritten in
    place is read again.
    """
    stat = Path(path).stat()
    return _gguf_fields(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _gguf_fields(path: str, size: int, mtime_ns: int) -> dict[str, Any]:
    return read_gguf_metadata(path, lambda name: name.startswith("tokenizer.") or name == "general.architecture")


def _token_content(token: Any) -> str | None:
    """tokenizer_config.json writes special tokens as a string or as {"content": ...}."""
    if isinstance(token, dict):
        return token.get("content")
    return token


def _raise_exception(message: str) -> None:
    raise ValueError(f"chat template: {message}")


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False) -> str:
    # Jinja's built-in tojson escapes <, > and & for HTML; chat templates want the plain JSON.
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _chat_env() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    # trim_blocks/lstrip_blocks and loopcontrols match how Hugging Face renders these templates.
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    return env


def validate_messages(messages: Any) -> None:
    """Raises ValueError naming the first malformed field, e.g. `messages[1].content`."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"messages must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r:.80}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(message).__name__}")
        for key in ("role", "content"):
            if key not in message:
                raise ValueError(f"messages[{i}].{key} is missing")
            if not isinstance(message[key], str):
                raise ValueError(f"messages[{i}].{key} must be a string, got {type(message[key]).__name__}")


class Tokenizer:
    """A `tokenizers` backend plus the model's special ids and chat template.

    Build with `Tokenizer.from_gguf(path)` or `Tokenizer.from_hf_dir(path)`.
    """

    def __init__(self, backend: _Backend, *, bos_token_id: int | None, eos_token_id: int | None,
                 add_bos_token: bool = False, chat_template: str | None = None,
                 extra_eos_token_ids: tuple[int, ...] = (), sampling_defaults: dict | None = None,
                 sentencepiece: bool = False):
        self.backend = backend
        self.sentencepiece = sentencepiece   # pieces spell spaces "▁" and bytes `<0xNN>`
        # The model's recommended sampling values (generation_config.json); {} when it gives none.
        self.sampling_defaults: dict = dict(sampling_defaults or {})
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.add_bos_token = add_bos_token
        self.has_chat_template = chat_template is not None
        self.chat_template = chat_template if chat_template is not None else _FALLBACK_CHAT_TEMPLATE
        try:
            self._template = _chat_env().from_string(self.chat_template)
        except jinja2.TemplateSyntaxError as e:
            raise ValueError(f"chat_template is not valid jinja: {e}") from e
        self._special_ids = frozenset(
            i for i, token in backend.get_added_tokens_decoder().items() if token.special)
        eos = {i for i in (eos_token_id, *extra_eos_token_ids) if i is not None}
        for name in _END_OF_GENERATION:
            i = backend.token_to_id(name)
            if i is not None and i in self._special_ids:
                eos.add(i)
        self.eos_token_ids: frozenset[int] = frozenset(eos)

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, path: str | Path) -> Tokenizer:
        """Rebuilds the tokenizer described by a GGUF file's metadata: byte-level BPE ("gpt2") or
        SentencePiece ("llama", Gemma's). Without `tokenizer.chat_template`, Gemma files get
        Gemma's turn format and others ChatML."""
        fields = _read_gguf_fields(path)
        kind = fields.get("tokenizer.ggml.model")
        template = fields.get("tokenizer.chat_template")
        if template is None:
            template = _ARCH_CHAT_TEMPLATES.get(fields.get("general.architecture"))
        if kind == "llama":
            return cls(
                tokenizer_spm.sentencepiece_backend(fields, str(path)),
                bos_token_id=fields.get("tokenizer.ggml.bos_token_id"),
                eos_token_id=fields.get("tokenizer.ggml.eos_token_id"),
                # llama.cpp adds BOS to a SentencePiece vocabulary unless the file says otherwise.
                add_bos_token=bool(fields.get("tokenizer.ggml.add_bos_token", True)),
                chat_template=template, sentencepiece=True)
        if kind != "gpt2":
            raise ValueError(f"{path}: tokenizer.ggml.model={kind!r} is not supported; only 'gpt2' "
                             "(byte-level BPE) and 'llama' (SentencePiece)")
        tokens: list[str] = fields["tokenizer.ggml.tokens"]
        token_types: list[int] = fields.get("tokenizer.ggml.token_type") or [_TOKEN_NORMAL] * len(tokens)
        vocab = {token: i for i, token in enumerate(tokens)}
        # Byte-level tokens never hold a literal space (it is spelled "Ġ"), so one split is exact.
        merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]

        backend = _Backend(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
        backend.pre_tokenizer = _pre_tokenizer(fields.get("tokenizer.ggml.pre", "default"))
        backend.decoder = decoders.ByteLevel()
        backend.add_special_tokens([
            AddedToken(t, special=True, normalized=False)
            for t, kind in zip(tokens, token_types) if kind == _TOKEN_CONTROL])
        # llama.cpp matches user-defined tokens (e.g. `<think>`) whole, but they are ordinary text.
        backend.add_tokens([
            AddedToken(t, special=False, normalized=False)
            for t, kind in zip(tokens, token_types) if kind == _TOKEN_USER_DEFINED])

        return cls(
            backend,
            bos_token_id=fields.get("tokenizer.ggml.bos_token_id"),
            eos_token_id=fields.get("tokenizer.ggml.eos_token_id"),
            add_bos_token=bool(fields.get("tokenizer.ggml.add_bos_token", False)),
            chat_template=template,
        )

    @classmethod
    def from_hf_dir(cls, path: str | Path) -> Tokenizer:
        """Loads `tokenizer.json`, with bos/eos and the chat template from `tokenizer_config.json`.

        The backend's own post-processor adds BOS where the model wants it (Llama 3's template
        processing), so `add_bos_token` is honoured only when that post-processor did not.
        Extra stop ids come from `generation_config.json`'s `eos_token_id` (an int or a list), and
        its temperature / top_k / top_p / min_p / repetition_penalty become `sampling_defaults`.
        """
        path = Path(path)
        backend = _Backend.from_file(str(path / "tokenizer.json"))
        config = _load_json(path / "tokenizer_config.json")
        template = config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
            named = {t.get("name"): t.get("template") for t in template}
            template = named.get("default")
        if template is None and (path / "chat_template.jinja").exists():
            template = (path / "chat_template.jinja").read_text()

        def token_id(key: str) -> int | None:
            content = _token_content(config.get(key))
            return backend.token_to_id(content) if content is not None else None

        generation = _load_json(path / "generation_config.json")
        generation_eos = generation.get("eos_token_id")
        if isinstance(generation_eos, int):
            generation_eos = [generation_eos]
        return cls(
            backend,
            bos_token_id=token_id("bos_token"),
            eos_token_id=token_id("eos_token"),
            add_bos_token=bool(config.get("add_bos_token", False)),
            chat_template=template,
            extra_eos_token_ids=tuple(generation_eos or ()),
            sampling_defaults=model_defaults(generation),
        )

    # ---- vocabulary ---------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    def id_to_piece(self, token_id: int) -> str:
        """The token as the vocabulary spells it (byte-level: space is "Ġ", newline "Ċ";
        SentencePiece: space is "▁")."""
        piece = self.backend.id_to_token(token_id)
        if piece is None:
            raise ValueError(f"token_id {token_id} is outside the vocabulary of {self.vocab_size}")
        return piece

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a token stands for; special tokens give their UTF-8 text."""
        piece = self.id_to_piece(token_id)
        if self.sentencepiece and token_id not in self._special_ids:
            return tokenizer_spm.piece_bytes(piece)
        if token_id in self._special_ids or not all(c in _CHAR_TO_BYTE for c in piece):
            return piece.encode("utf-8")
        return bytes(_CHAR_TO_BYTE[c] for c in piece)

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The most characters one token can stand for (its byte length bounds it).

        A text of c characters therefore has at least c / max_token_chars tokens, which lets a
        server refuse an over-long prompt from its length alone, before tokenizing it.
        """
        longest = 1
        for i in range(self.vocab_size):
            try:
                longest = max(longest, len(self.token_bytes(i)))
            except ValueError:   # a hole in the id space
                continue
        return longest

    def _token_text(self, token_id: int | None) -> str | None:
        return None if token_id is None else self.backend.id_to_token(token_id)

    @property
    def bos_token(self) -> str | None:
        return self._token_text(self.bos_token_id)

    @property
    def eos_token(self) -> str | None:
        return self._token_text(self.eos_token_id)

    # ---- text <-> ids -------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids for `text`. Special-token text such as `<|im_start|>` maps to its single id.

        Args:
          text: the string to tokenize.
          add_special_tokens: add BOS when the model asks for it (GGUF `add_bos_token`, or the
            HF backend's post-processor).
        Returns:
          i32 ids, as a Python list.
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a string, got {type(text).__name__}")
        ids = self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        if (add_special_tokens and self.add_bos_token and self.bos_token_id is not None
                and ids[:1] != [self.bos_token_id]):
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text for `ids`; bytes that are not valid UTF-8 become U+FFFD."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ---- chat ---------------------------------------------------------------------------------

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            **template_kwargs: Any) -> str:
        """Renders a conversation with the model's own jinja template (ChatML if it has none).

        Args:
          messages: [{"role": str, "content": str}, ...]; roles are passed through unchecked.
          add_generation_prompt: end with the assistant header so the model answers.
          **template_kwargs: extra template variables (e.g. `tools`).
        Returns:
          The prompt text; encode it with `add_special_tokens=False` if the template writes BOS.
        Raises:
          ValueError: naming the field (`messages[1].content`) for a malformed message, or with
            the template's own message when it calls `raise_exception`.
        """
        validate_messages(messages)
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
                **template_kwargs,
            )
        except jinja2.TemplateError as e:
            raise ValueError(f"chat template failed to render: {e}") from e


def _load_json(path: Path) -> dict:
    if not path.exists():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class IncrementalDetokenizer:
    """Turns a stream of generated ids into text deltas, one `push` per engine step.

    Keeps a short window of trailing ids, like vLLM's prefix/read offsets: the window starts at
    `_prefix`, the ids in `[_prefix, _read)` are context already returned as text (so decoders
    that treat a first token specially still see its left neighbour), and `_emitted` counts the
    window's characters returned so far. Each push decodes only the window. A trailing U+FFFD
    means the last bytes are an unfinished character (say 2 of an emoji's 4 bytes): it is held
    back until a later id completes it. When the window ends cleanly it slides: `_read` (the last
    clean end, so a character boundary) becomes the new start.

    Invariant: "".join(pushes) + flush() == tokenizer.decode(all pushed ids), with prompt_ids=None.
    """

    # Prompt ids decoded as left context for the first output token.
    _NUM_CONTEXT_IDS = 5

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int] | None = None,
                 skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._ids: list[int] = list(prompt_ids or ())
        self._read = len(self._ids)
        self._prefix = max(0, self._read - self._NUM_CONTEXT_IDS)
        # An unfinished last prompt character is not counted as emitted, so the output id that
        # completes it returns the whole character.
        self._emitted = len(_stable_prefix(self._decode_window()))

    @property
    def output_ids(self) -> list[int]:
        """Every id pushed so far (prompt ids first, when given)."""
        return list(self._ids)

    def _decode_window(self) -> str:
        return self.tokenizer.decode(self._ids[self._prefix:], self.skip_special_tokens)

    def push(self, token_ids: list[int]) -> str:
        """Appends ids; returns the text they complete (maybe "", never a partial character)."""
        self._ids.extend(token_ids)
        text = self._decode_window()
        stable = _stable_prefix(text)
        delta = stable[self._emitted:]
        self._emitted = max(self._emitted, len(stable))
        if len(stable) == len(text) and len(self._ids) > self._read:
            context = self._ids[self._read:]
            self._prefix, self._read = self._read, len(self._ids)
            self._emitted = len(self.tokenizer.decode(context, self.skip_special_tokens))
        return delta

    def flush(self) -> str:
        """Returns what was held back at the end of the stream (an unfinished character, as U+FFFD)."""
        text = self._decode_window()
        delta = text[self._emitted:]
        self._emitted = len(text)
        return delta


def _stable_prefix(text: str) -> str:
    """`text` less the character later bytes may still change.

    Under lossy UTF-8 decoding an unfinished tail shows as exactly one trailing U+FFFD, and bytes
    appended later change only that character, never the ones before it.
    """
    return text[:-1] if text.endswith("\ufffd") else text
