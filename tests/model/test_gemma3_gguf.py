"""Gemma 3 GGUF, on small files written here: the default-suite side of the real-weights test
(tests/engine/test_gemma3_vs_transformers.py, heavy).

- Weights and metadata: a random Gemma 3 (8 layers, so the every-sixth-layer-full pattern and a
  partial group both occur) saved by transformers, and the same weights as a GGUF written as
  llama.cpp's converter writes gemma3: gguf-py's tensor-name table for GEMMA3, norms stored as
  1 + w, only the metadata keys llama.cpp writes (no pattern, local RoPE base or query scale).
  Both load to identical params and the same ModelArch.
- Tokenizer: a small SentencePiece vocabulary in GGUF fields, tokenized by jaxserve and by
  transformers' own GGUF Gemma tokenizer builder, on texts with spaces, space runs, newlines,
  control tokens and characters outside the vocabulary (byte fallback).
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from jaxserve.model.weights import load_gguf, load_safetensors_dir
from jaxserve.tokenizer import Tokenizer
from jaxserve.tokenizer_spm import sentencepiece_backend

from .files import write_hf_model_as_gguf
from .hf_models import FamilySpec, build_hf_model

VOCAB = 128
GEMMA3_LIKE_270M = FamilySpec("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
    num_hidden_layers=8, head_dim=32, num_key_value_heads=1, sliding_window=8, query_pre_attn_scalar=32,
    layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(8)],
    rope_parameters={"full_attention": dict(rope_type="default", rope_theta=1000000.0),
                     "sliding_attention": dict(rope_type="default", rope_theta=10000.0)}))


def _write_gemma3_gguf(model, path) -> None:
    c = model.config

    def gemma3_keys(w) -> None:
        w.add_value_length(c.head_dim)
        w.add_sliding_window(c.sliding_window)

    def as_llama_cpp_writes(name: str, data: np.ndarray) -> np.ndarray | None:
        if name == "lm_head.weight":           # tied: llama.cpp writes only token_embd
            return None
        return data + 1.0 if name.endswith("norm.weight") else data

    write_hf_model_as_gguf(model, "gemma3", path, VOCAB,
                           rope_theta=c.rope_parameters["full_attention"]["rope_theta"],
                           extra=gemma3_keys, tensor=as_llama_cpp_writes)


def test_gemma3_gguf_loads_to_the_same_params_as_safetensors(tmp_path):
    model = build_hf_model(GEMMA3_LIKE_270M, VOCAB)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    _write_gemma3_gguf(model, tmp_path / "model.gguf")
    hf_arch, hf_params = load_safetensors_dir(tmp_path / "hf")
    gguf_arch, gguf_params = load_gguf(tmp_path / "model.gguf")
    assert gguf_arch.layer_kinds == ("sliding",) * 5 + ("full",) + ("sliding",) * 2
    assert gguf_arch.rms_norm_eps == pytest.approx(hf_arch.rms_norm_eps, rel=1e-6)
    assert dataclasses.replace(gguf_arch, rms_norm_eps=hf_arch.rms_norm_eps) == hf_arch
    flat = lambda p: {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(p)[0]}
    flat_hf, flat_gguf = flat(hf_params), flat(gguf_params)
    assert flat_gguf.keys() == flat_hf.keys()
    for key, value in flat_hf.items():       # the norms: (1 + w) + 0 vs w + 1, one rounding apart
        np.testing.assert_allclose(flat_gguf[key], value, rtol=0, atol=1e-6, err_msg=key)


# A SentencePiece vocabulary shaped like Gemma's: control tokens first, user-defined newline runs,
# the 256 byte pieces, then pieces in merge order (scores falling), a space run stored with spaces.
_CONTROL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
_USER = ["\n", "\n\n"]
_PIECES = ["▁t", "he", "▁the", "▁a", "in", "▁in", "er", "or", "ld", "▁w", "▁wor", "▁world", "Hel", "lo",
           "Hello", "  ", "▁is", "▁c", "ap", "▁cap", "it", "al", "▁capital", "▁of", "▁Fr", "an", "ce",
           "▁France", "?", "é", "x"] + list("abcdefghijklmnopqrstuvwxyzHFWT▁")


def _sp_fields() -> dict:
    tokens = _CONTROL + _USER + [f"<0x{b:02X}>" for b in range(256)] + _PIECES
    types = [3] * len(_CONTROL) + [4] * len(_USER) + [6] * 256 + [1] * len(_PIECES)
    return {
        "general.architecture": "gemma3", "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [-1000.0] * 8 + [0.0] * 256 + [-float(i) for i in range(len(_PIECES))],
        "tokenizer.ggml.token_type": types, "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.ggml.eos_token_id": 1, "tokenizer.ggml.unknown_token_id": 3,
        "tokenizer.ggml.padding_token_id": 0, "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_space_prefix": False,
    }


TEXTS = ["Hello world", "What is the capital of France?", "the  world\n\n in", "<start_of_turn>user\nhi<end_of_turn>",
         "  leading", "ü and 日本 are not pieces", "Hello\n\n\nworld é"]


def test_sentencepiece_tokenizer_matches_transformers_gguf_builder():
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    fields = _sp_fields()
    ours = sentencepiece_backend(fields)
    tdict = {"tokenizer_type": "llama", "tokens": fields["tokenizer.ggml.tokens"],
             "scores": fields["tokenizer.ggml.scores"], "token_type": fields["tokenizer.ggml.token_type"],
             "add_prefix_space": False}
    ref, _ = convert_gguf_tokenizer("gemma3", tdict)
    for text in TEXTS:
        want = ref.encode(text, add_special_tokens=False).ids
        assert ours.encode(text).ids == want, text
        assert ours.decode(want, skip_special_tokens=False) == text     # bytes fall back and come back


def test_gemma_tokenizer_adds_bos_stops_on_end_of_turn_and_chats_in_turns(monkeypatch):
    fields = _sp_fields()
    monkeypatch.setattr("jaxserve.tokenizer._read_gguf_fields", lambda path: fields)
    tok = Tokenizer.from_gguf("gemma.gguf")
    assert tok.encode("Hello world")[0] == 2 and tok.decode(tok.encode("Hello world")) == "Hello world"
    assert tok.eos_token_ids == {1, tok.backend.token_to_id("<end_of_turn>")}
    text = tok.apply_chat_template([{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "hi"},
                                    {"role": "assistant", "content": "Hello"},
                                    {"role": "user", "content": "bye"}])
    assert text == ("<bos><start_of_turn>user\nBe brief.\n\nhi<end_of_turn>\n<start_of_turn>model\nHello"
                    "<end_of_turn>\n<start_of_turn>user\nbye<end_of_turn>\n<start_of_turn>model\n")
    assert tok.encode(text, add_special_tokens=False).count(2) == 1
    assert tok.token_bytes(tok.backend.token_to_id("<0x0A>")) == b"\n"
    assert tok.token_bytes(tok.backend.token_to_id("▁world")) == b" world"


def test_space_prefix_vocabulary_is_refused_by_name():
    with pytest.raises(ValueError, match="add_space_prefix"):
        sentencepiece_backend({**_sp_fields(), "tokenizer.ggml.add_space_prefix": True})
