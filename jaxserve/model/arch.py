"""ModelArch: the shape of a Llama-family decoder, read from the checkpoint (not the YAML)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class ModelArch:
    vocab_size: int
    hidden_size: int            # E
    intermediate_size: int      # F
    num_layers: int             # L
    num_heads: int              # H
    num_kv_heads: int           # K
    head_dim: int               # D
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position: int = 8192
    tie_word_embeddings: bool = True
    qkv_bias: bool = False      # Qwen2-style checkpoints carry q/k/v biases

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.num_kv_heads}")

    @property
    def q_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads


def tiny_arch(vocab_size: int = 128) -> ModelArch:
    """A random model small enough for logic tests: 2 layers, GQA 2:1."""
    return ModelArch(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10000.0, max_position=4096)
