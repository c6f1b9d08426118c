"""A GGUF SentencePiece vocabulary (`tokenizer.ggml.model = "llama"`) -> a `tokenizers` BPE.

Gemma's files (llama.cpp's SPM vocabulary type) store pieces and scores but no merges. SentencePiece
BPE merges, at each step, the adjacent pair whose joined piece ranks best; a BPE model whose merge
list is every split (left, right) of every piece, ranked by the joined piece, does the same. The
rank is the piece's position in the file (Gemma's scores do not follow its merge order; transformers
builds its GGUF Gemma tokenizer on the same rule, which the Gemma 3 test checks). Spaces become "▁"
before the model runs; characters outside the vocabulary fall back to their `<0xNN>` byte pieces.
Pieces made only of spaces are stored with real spaces, so they are respelled with "▁" to be found.
"""
from __future__ import annotations

from typing import Any

from tokenizers import AddedToken, decoders, models, normalizers
from tokenizers import Tokenizer as Backend

SPACE = "\u2581"
_CONTROL, _USER_DEFINED = 3, 4     # llama.cpp token types


def _respell(token: str) -> str:
    return SPACE * len(token) if token and not token.strip(" ") else token


def _merges(tokens: list[str], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Every (left, right) whose halves and join are pieces; best join first, then longer left."""
    merges = []
    for piece in tokens:
        for cut in range(len(piece) - 1, 0, -1):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((left, right))
    return merges


def sentencepiece_backend(fields: dict[str, Any], source: str = "GGUF") -> Backend:
    """The tokenizer a GGUF's `tokenizer.ggml.*` SentencePiece fields describe.

    Args:
      fields: the file's `tokenizer.*` metadata.
    Returns:
      A `tokenizers.Tokenizer` (no BOS post-processor: jaxserve's Tokenizer adds BOS itself).
    Raises:
      ValueError: for `tokenizer.ggml.add_space_prefix = true` (Llama 2's leading "▁"), not
        implemented, and for a vocabulary without `<unk>`.
    """
    if fields.get("tokenizer.ggml.add_space_prefix", False):
        raise ValueError(f"{source}: tokenizer.ggml.add_space_prefix=true (a SentencePiece vocabulary "
                         "that prepends a space) is not supported; only Gemma's (false)")
    raw: list[str] = fields["tokenizer.ggml.tokens"]
    types: list[int] = fields.get("tokenizer.ggml.token_type") or [1] * len(raw)
    tokens = [_respell(t) for t in raw]
    vocab = {t: i for i, t in enumerate(tokens)}
    unk_id = fields.get("tokenizer.ggml.unknown_token_id")
    if unk_id is None:
        raise ValueError(f"{source} lacks tokenizer.ggml.unknown_token_id")
    backend = Backend(models.BPE(vocab, _merges(tokens, vocab), unk_token=tokens[unk_id],
                                 fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", SPACE)
    backend.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, kind in zip(tokens, types) if kind == _CONTROL])
    # User-defined pieces (`\n\n`, `<b>`, ...) are matched whole, as llama.cpp does; the respelled
    # space runs are left to the merges, which reach them from "▁".
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, r, kind in zip(tokens, raw, types) if kind == _USER_DEFINED and t == r])
    return backend


def piece_bytes(piece: str) -> bytes:
    """The bytes a SentencePiece piece stands for: `<0x0A>` is one byte, "▁" a space."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return bytes([int(piece[3:5], 16)])
        except ValueError:
            pass
    return piece.replace(SPACE, " ").encode("utf-8")
