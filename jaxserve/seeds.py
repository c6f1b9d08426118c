"""Request seeds -> the 32-bit per-sequence seeds the sampler keys its draws with.

One place for the formula, because the engine, the disaggregated workers and the router must
agree on it: failover replays a sequence elsewhere with the seed the router fixed, and the
continuation is the same only if every side derives seeds identically.

A client seed may be any integer (OpenAI's API sets no bound). Seeds in [0, 2**32) are used as
they are; any other integer (negative, or wider than 32 bits) is hashed to 32 bits, never cut,
so 2**64 and 10**100 get different streams. Sequence i of a request with n samples gets the
base seed plus i times a large odd constant (the golden-ratio increment), modulo 2**32.
"""
from __future__ import annotations

import hashlib

SEED_BITS = 32
_SEED_MOD = 1 << SEED_BITS
_SAMPLE_STRIDE = 0x9E3779B1     # odd, so the n samples' seeds are distinct mod 2**32
_UNSEEDED_STRIDE = 1_000_003    # spreads config.seed apart for requests that give no seed


def fold_seed(seed: int) -> int:
    """Any integer -> [0, 2**32): identity inside that range, a hash outside it."""
    if 0 <= seed < _SEED_MOD:
        return seed
    digest = hashlib.blake2b(str(seed).encode(), digest_size=SEED_BITS // 8).digest()
    return int.from_bytes(digest, "little")


def request_seed(seed: int | None, config_seed: int, request_number: int) -> int:
    """The base seed of one request: the client's (folded), else config.seed and a counter."""
    if seed is not None:
        return fold_seed(seed)
    return fold_seed(config_seed * _UNSEEDED_STRIDE + request_number)


def sample_seed(base_seed: int, index: int) -> int:
    """The seed of sample `index` (of n) of a request whose base seed is base_seed."""
    return (base_seed + index * _SAMPLE_STRIDE) % _SEED_MOD
