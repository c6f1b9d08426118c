"""Checks a parsed request passes before any of its text is tokenized (token-level checks:
jaxserve/admission.py).

Both are cheap and run before the tokenizer sees the request, so what they refuse costs the
server almost nothing:
  * every string is valid Unicode text: JSON may carry lone surrogates ("\\ud800"), and the
    body's invalid UTF-8 bytes arrive as such surrogates too (app.py decodes bodies with
    "surrogateescape"); the tokenizer cannot take either;
  * text that is longer, in characters, than max_model_len tokens could ever cover is refused
    from its length alone, without a tokenizer pass over it.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def find_invalid_text(value: Any, path: str = "") -> str | None:
    """The path ("messages[0].content") of the first string that is not valid UTF-8 text, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    if isinstance(value, BaseModel):
        value = {name: getattr(value, name) for name in type(value).model_fields}
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            found = find_invalid_text(key, where) or find_invalid_text(item, where)
            if found:
                return found
        return None
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], int):   # token ids: nothing to check, maybe many
            return None
        for i, item in enumerate(value):
            found = find_invalid_text(item, f"{path}[{i}]")
            if found:
                return found
    return None


def text_fits(num_chars: int, max_model_len: int, max_token_chars: int) -> bool:
    """False when num_chars characters must be more than max_model_len tokens.

    Each token covers at most max_token_chars characters; the factor 2 leaves room for
    normalizers that fold several characters into one before tokenizing.
    """
    return num_chars <= 2 * max_model_len * max_token_chars
