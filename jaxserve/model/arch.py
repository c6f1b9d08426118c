"""ModelArch: the shape of a decoder, read from the checkpoint (not the YAML).

`family` names the registry entry (jaxserve/model/registry.py) that reads, builds and runs it;
the remaining fields are what the families' forward functions branch on, all static.
"""
from __future__ import annotations

from dataclasses import dataclass

ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """Hugging Face `rope_scaling` / `rope_parameters`, the kinds we implement (ROPE_TYPES).

    Fields are resolved at config reading: attention_factor is a number here even where the
    config leaves it to be derived from factor / mscale.
    """

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0          # llama3 only
    high_freq_factor: float = 4.0         # llama3 only
    original_max_position: int = 8192     # llama3 and yarn
    attention_factor: float = 1.0         # yarn: cos and sin (so q and k) are multiplied by it
    beta_fast: float = 32.0               # yarn: rotations bounding the extrapolated band
    beta_slow: float = 1.0                # yarn: rotations bounding the interpolated band
    truncate: bool = True                 # yarn: round the band edges to whole dimensions

    def __post_init__(self) -> None:
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_type {self.rope_type!r} is not supported "
                             f"(supported: {', '.join(ROPE_TYPES)})")
        if not self.factor > 0:
            raise ValueError(f"rope scaling factor must be > 0, got {self.factor}")


@dataclass(frozen=True, kw_only=True)
class ModelArch:
    vocab_size: int
    hidden_size: int            # E
    intermediate_size: int      # F
    num_layers: int             # L
    num_heads: int              # H
    num_kv_heads: int           # K
    head_dim: int               # D
    family: str = "llama"       # registry key of the family that runs it
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-5
    max_position: int = 8192
    tie_word_embeddings: bool = True
    qkv_bias: bool = False      # Qwen2-style checkpoints carry q/k/v biases
    qk_norm: bool = False       # Qwen3: RMSNorm over each head's q and k before RoPE
    sliding_window: int | None = None   # Mistral: each token attends to this many, itself included
    # Gemma: per-layer kinds, "sliding" (sliding_window, rope_local_theta, no scaling) or "full"
    # (rope_theta, rope_scaling); None: every layer alike.
    layer_kinds: tuple[str, ...] | None = None
    rope_local_theta: float | None = None
    query_pre_attn_scalar: float | None = None  # logit scale 1/sqrt(this) instead of 1/sqrt(D)
    attn_soft_cap: float | None = None          # attention logits -> cap * tanh(logits / cap)
    final_soft_cap: float | None = None         # LM-head logits, likewise

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.num_kv_heads}")
        if isinstance(self.rope_scaling, dict):      # from the orbax cache's JSON
            object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))
        if isinstance(self.layer_kinds, list):       # likewise
            object.__setattr__(self, "layer_kinds", tuple(self.layer_kinds))
        if self.layer_kinds is not None:
            if len(self.layer_kinds) != self.num_layers or set(self.layer_kinds) - {"sliding", "full"}:
                raise ValueError(f"layer_kinds must give 'sliding' or 'full' for each of the "
                                 f"{self.num_layers} layers, got {self.layer_kinds}")
            if "sliding" in self.layer_kinds and self.sliding_window is None:
                raise ValueError("sliding layers need a sliding_window")
        if self.sliding_window is not None and not self.sliding_window > 0:
            raise ValueError(f"sliding_window must be > 0 or None, got {self.sliding_window}")

    @property
    def q_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads


def tiny_arch(vocab_size: int = 128) -> ModelArch:
    """A random model small enough for logic tests: 2 layers, GQA 2:1."""
    return ModelArch(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10000.0, max_position=4096)
