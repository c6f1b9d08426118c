"""Real English text for benchmarks, from the docstrings of Python's own standard library.

Benchmarks need prompts that tokenize like real input (random ids do not: they give odd attention
patterns and never trip merges), that are the same on every machine with the same Python, and that
need no download. The stdlib documents itself in prose, so its docstrings are such a text.

    text = stdlib_docstrings()                   # ~290k characters on CPython 3.11
    windows = token_windows(tokenizer.encode(text), num=32, length=512)
"""
from __future__ import annotations

import hashlib
import importlib
import inspect

# Prose-heavy modules, in a fixed order so the corpus (and every prompt cut from it) is stable.
MODULES = (
    "argparse", "asyncio", "collections", "concurrent.futures", "contextlib", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "email", "functools", "heapq", "http.client", "inspect", "io",
    "itertools", "json", "logging", "multiprocessing", "os", "pathlib", "pickle", "random", "re",
    "shutil", "socket", "sqlite3", "statistics", "string", "subprocess", "tarfile", "textwrap",
    "threading", "typing", "unittest", "urllib.request", "uuid", "zipfile",
)
MIN_DOC_CHARS = 200   # shorter docstrings are mostly signatures and one-liners, not prose


def stdlib_docstrings(modules: tuple[str, ...] = MODULES) -> str:
    """The docstrings of the modules and of their public classes and functions, deduplicated.

    Returns:
      one string, docstrings separated by blank lines, in module then attribute-name order.
    """
    seen: set[str] = set()
    parts: list[str] = []
    for name in modules:
        module = importlib.import_module(name)
        objects = [module] + [getattr(module, a) for a in sorted(vars(module)) if not a.startswith("_")]
        for obj in objects:
            if not (inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isroutine(obj)):
                continue
            doc = inspect.getdoc(obj)   # classes inherit their base's doc: dedup drops the copies
            if doc and len(doc) >= MIN_DOC_CHARS and doc not in seen:
                seen.add(doc)
                parts.append(doc)
    return "\n\n".join(parts)


def fingerprint(text: str) -> str:
    """Short content hash, recorded with results so runs on different Pythons can be told apart."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def token_windows(token_ids: list[int], num: int, length: int, page_size: int = 16) -> list[list[int]]:
    """`num` windows of exactly `length` tokens, as far apart as the corpus allows.

    Windows do not overlap when the corpus is long enough; otherwise they are spread evenly, at
    least `page_size` tokens apart, so no two share a first KV page (and the prefix cache, which
    chains page hashes from the first page, can never match one against another).

    Raises:
      ValueError: the corpus is too short for that many distinct windows.
    """
    if num <= 0 or length <= 0:
        raise ValueError(f"num and length must be > 0, got num={num}, length={length}")
    last_start = len(token_ids) - length
    stride = length if num == 1 else min(length, last_start // (num - 1))
    if last_start < 0 or (num > 1 and stride < min(page_size, length)):
        raise ValueError(f"the corpus has {len(token_ids)} tokens: too few for {num} distinct "
                         f"windows of {length} tokens")
    return [list(token_ids[i * stride:i * stride + length]) for i in range(num)]
