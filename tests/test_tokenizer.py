"""jaxserve.tokenizer against Hugging Face transformers, on the real SmolLM2 GGUF."""
from __future__ import annotations

import json
import random

import pytest

from jaxserve.tokenizer import IncrementalDetokenizer, Tokenizer


TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x ** 2  # square\n",
    "Pi is 3.14159 and 2024-06-01, x=1000000",
    "a    b\t\tc   ",
    "\n\n\nline\r\nnext\n",
    "emoji 😀👍🏽 and flags 🇫🇷",
    "中文分词 和 日本語のテキスト",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><repo_name>x<file_sep>",
    "I'm here, you're there, it's 'quoted'",
    "   leading spaces",
    "ÀÉÎõü ß ﬁ",
    "",
]

# Text where transformers' GGUF loader disagrees with the model's real tokenizer. transformers
# splits "smollm" files with the plain GPT-2 regex; llama.cpp (`\p{N}` first, then GPT-2) and
# SmolLM2's tokenizer.json (Digits(individual_digits=True) + ByteLevel) cut digits out first, so
# a run of spaces before a digit stays one piece: "a  1" -> a, ĠĠ, 1 (transformers: a, Ġ, Ġ, 1).
DIGIT_AFTER_SPACES = {
    "a  1": ["a", "ĠĠ", "1"],
    "x   12 3": ["x", "ĠĠĠ", "1", "2", "Ġ", "3"],
}

CONVERSATIONS = [
    [{"role": "user", "content": "Hi 😀"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hello"},
     {"role": "assistant", "content": "Arr!"}, {"role": "user", "content": "Where is the 宝?\n"}],
]


@pytest.fixture(scope="module")
def tok(gguf_path) -> Tokenizer:
    return Tokenizer.from_gguf(gguf_path)


@pytest.fixture(scope="module")
def ref(gguf_path):
    import transformers
    return transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


# ---- vocabulary and special ids ----------------------------------------------------------------

def test_special_ids(tok):
    assert tok.vocab_size == 49152
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    assert (tok.bos_token, tok.eos_token) == ("<|im_start|>", "<|im_end|>")
    # eos (<|im_end|>, the end of a chat turn) plus <|endoftext|>, the base model's document end.
    assert tok.eos_token_ids == {2, 0}
    assert not tok.add_bos_token and tok.encode("hi")[:1] != [tok.bos_token_id]


def test_control_tokens_encode_whole(tok):
    for i, piece in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>"]):
        assert tok.encode(piece) == [i]
        assert tok.id_to_piece(i) == piece and tok.is_special(i)
    assert len(tok.encode("<|im_start |>")) > 1


def test_token_bytes(tok):
    assert tok.token_bytes(tok.encode(" the")[0]) == b" the"
    assert b"".join(tok.token_bytes(i) for i in tok.encode("😀 中")) == "😀 中".encode()
    assert tok.token_bytes(1) == b"<|im_start|>"
    with pytest.raises(ValueError, match="token_id"):
        tok.id_to_piece(10**6)


# ---- encode / decode vs transformers -------------------------------------------------------------

@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_transformers(tok, ref, text):
    assert tok.encode(text) == ref.encode(text)
    assert tok.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("text", DIGIT_AFTER_SPACES)
def test_digits_split_like_llama_cpp(tok, ref, text):
    ids = tok.encode(text)
    assert [tok.id_to_piece(i) for i in ids] == DIGIT_AFTER_SPACES[text]
    assert ids != ref.encode(text)  # the known transformers difference; see DIGIT_AFTER_SPACES
    assert tok.decode(ids) == text


@pytest.mark.parametrize("text", TEXTS)
def test_decode_round_trip(tok, ref, text):
    ids = tok.encode(text)
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=True)


# ---- chat template -------------------------------------------------------------------------------

@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chat_template_matches_transformers(tok, ref, messages, add_generation_prompt):
    ours = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    theirs = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours == theirs
    assert tok.encode(ours) == ref.encode(theirs)


def test_fallback_chat_template_is_chatml(tok):
    bare = Tokenizer(tok.backend, bos_token_id=1, eos_token_id=2, chat_template=None)
    assert not bare.has_chat_template
    prompt = bare.apply_chat_template([{"role": "user", "content": "hi"}])
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_template_raise_exception_and_specials(tok):
    template = ("{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be user') }}"
                "{% endif %}{{ bos_token }}{{ messages[0]['content'] | tojson }}{{ eos_token }}")
    custom = Tokenizer(tok.backend, bos_token_id=1, eos_token_id=2, chat_template=template)
    assert custom.apply_chat_template([{"role": "user", "content": "é<"}]) == '<|im_start|>"é<"<|im_end|>'
    with pytest.raises(ValueError, match="first message must be user"):
        custom.apply_chat_template([{"role": "tool", "content": "x"}])


@pytest.mark.parametrize("messages, field", [
    ([{"content": "hi"}], r"messages\[0\]\.role"),
    ([{"role": "user", "content": "a"}, {"role": "user"}], r"messages\[1\]\.content"),
    ([{"role": "user", "content": 3}], r"messages\[0\]\.content"),
    ([{"role": "user", "content": None}], r"messages\[0\]\.content"),
    (["hello"], r"messages\[0\]"),
    ([], "messages"),
    ("hello", "messages"),
])
def test_malformed_messages_raise(tok, messages, field):
    with pytest.raises(ValueError, match=field):
        tok.apply_chat_template(messages)


def test_unknown_role_passes_through(tok):
    assert "<|im_start|>critic\nok<|im_end|>" in tok.apply_chat_template([{"role": "critic", "content": "ok"}])


# ---- from_hf_dir ---------------------------------------------------------------------------------

def test_from_hf_dir(tok, tmp_path):
    tok.backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"},
        "chat_template": tok.chat_template, "add_bos_token": False}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 5]}))
    hf = Tokenizer.from_hf_dir(tmp_path)
    assert (hf.bos_token_id, hf.eos_token_id, hf.eos_token_ids) == (1, 2, {0, 2, 5})
    for text in TEXTS + list(DIGIT_AFTER_SPACES):
        assert hf.encode(text) == tok.encode(text)
    assert hf.apply_chat_template(CONVERSATIONS[1]) == tok.apply_chat_template(CONVERSATIONS[1])


# ---- incremental detokenizer ---------------------------------------------------------------------

def _byte_token_ids(tok: Tokenizer) -> dict[int, int]:
    """byte value -> id of the token that is exactly that byte."""
    out = {}
    for i in range(tok.vocab_size):
        b = tok.token_bytes(i)
        if len(b) == 1 and not tok.is_special(i):
            out[b[0]] = i
    return out


def _random_stream(tok: Tokenizer, byte_ids: dict[int, int], rng: random.Random) -> list[int]:
    """Ordinary tokens, specials, and characters spelled one byte token at a time."""
    ids: list[int] = []
    for _ in range(rng.randint(1, 40)):
        kind = rng.random()
        if kind < 0.4:
            ids += tok.encode(rng.choice(TEXTS))
        elif kind < 0.7:  # a multi-byte character split across single-byte tokens
            ids += [byte_ids[b] for b in rng.choice("😀👍🏽中é🇫🇷").encode()]
        elif kind < 0.8:
            ids.append(rng.choice([0, 1, 2]))
        else:  # anything at all, invalid UTF-8 included
            ids.append(rng.randrange(tok.vocab_size))
    return ids


def _stream(detok: IncrementalDetokenizer, ids: list[int], rng: random.Random) -> list[str]:
    deltas, i = [], 0
    while i < len(ids):
        n = rng.choice([1, 1, 1, 2, 3])
        deltas.append(detok.push(ids[i:i + n]))
        i += n
    return deltas


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_incremental_equals_full_decode(tok, skip_special_tokens):
    byte_ids = _byte_token_ids(tok)
    rng = random.Random(0)
    for _ in range(200):
        ids = _random_stream(tok, byte_ids, rng)
        full = tok.decode(ids, skip_special_tokens=skip_special_tokens)
        detok = IncrementalDetokenizer(tok, skip_special_tokens=skip_special_tokens)
        deltas = _stream(detok, ids, rng)
        assert "".join(deltas) + detok.flush() == full
        if "\ufffd" not in full:
            assert not any("\ufffd" in d for d in deltas)


def test_incremental_holds_split_emoji(tok):
    byte_ids = _byte_token_ids(tok)
    detok = IncrementalDetokenizer(tok)
    emoji = "😀".encode()
    assert [detok.push([byte_ids[b]]) for b in emoji] == ["", "", "", "😀"]
    assert detok.push(tok.encode(" ok")) == " ok"
    assert detok.push([byte_ids[emoji[0]]]) == ""
    assert detok.flush() == "\ufffd"  # the stream ended mid-character, as decode() shows it


def test_incremental_with_prompt(tok):
    rng = random.Random(1)
    prompt = tok.encode(tok.apply_chat_template(CONVERSATIONS[0]))
    out = tok.encode("Sure! Here are 3 emoji: 😀👍🏽🇫🇷 and 中文.<|im_end|>")
    detok = IncrementalDetokenizer(tok, prompt_ids=prompt)
    text = "".join(_stream(detok, out, rng)) + detok.flush()
    assert text == tok.decode(out) == "Sure! Here are 3 emoji: 😀👍🏽🇫🇷 and 中文."


def test_incremental_decodes_a_short_window(tok):
    """Each push decodes a few trailing ids, not the whole output."""
    decoded = []

    class Counting:
        def decode(self, ids, skip_special_tokens=True):
            decoded.append(len(ids))
            return tok.decode(ids, skip_special_tokens)

    ids = tok.encode(" ".join(TEXTS) * 20)
    detok = IncrementalDetokenizer(Counting())
    text = "".join(detok.push([i]) for i in ids) + detok.flush()
    assert text == tok.decode(ids) and len(ids) > 1000
    assert max(decoded) <= 8


def test_bad_template_syntax_raises(tok):
    with pytest.raises(ValueError, match="chat_template"):
        Tokenizer(tok.backend, bos_token_id=1, eos_token_id=2, chat_template="{% for %}")
