"""Small random-weight Hugging Face checkpoints of each family, written by transformers itself.

Each is 2 layers, hidden 64, 4 query heads over 2 KV heads, with the SmolLM2 tokenizer (rebuilt
from the cached GGUF by jaxserve and saved as tokenizer.json, so vocabulary 49152). transformers
initializes norms to one and biases to zero, which would hide a mis-mapped norm or bias, so
those are redrawn; the init scale is raised so logits are far from uniform and greedy choices
are rarely near-ties.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jaxserve.model.source import KNOWN_MODELS, resolve_model_source
from jaxserve.tokenizer import Tokenizer

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, initializer_range=0.3, max_position_embeddings=4096)


@dataclass(frozen=True)
class FamilySpec:
    config_class: str          # transformers class names, resolved lazily
    model_class: str
    config: dict = field(default_factory=dict)
    sliding_window: int | None = None
    seed: int = 0              # another where seed 0 happens to put a near-tie early in a prompt


FAMILIES = {
    "llama3": FamilySpec("LlamaConfig", "LlamaForCausalLM", dict(
        rope_theta=500000.0, tie_word_embeddings=True,
        # original_max_position 64 with head_dim 16 puts the 8 frequencies in all three of
        # llama3's bands (kept, blended, divided by factor).
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=64))),
    "llama-linear": FamilySpec("LlamaConfig", "LlamaForCausalLM", dict(
        rope_scaling=dict(rope_type="linear", factor=4.0))),
    "qwen2": FamilySpec("Qwen2Config", "Qwen2ForCausalLM", dict(rope_theta=1000000.0)),
    # Qwen2.5's long-context yarn at a small scale: original length 64 with head_dim 16 and base
    # 1e6 puts the 8 frequencies in all three of yarn's bands; attention_factor 1.14 on q and k.
    "qwen2-yarn": FamilySpec("Qwen2Config", "Qwen2ForCausalLM", dict(
        rope_theta=1000000.0, max_position_embeddings=256,
        rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64))),
    "mistral": FamilySpec("MistralConfig", "MistralForCausalLM", dict(sliding_window=8, head_dim=16),
                          sliding_window=8),
    # head_dim 32: H * D = 128 != hidden 64, as in the real Qwen3 configs.
    "qwen3": FamilySpec("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=32, rope_theta=1000000.0)),
    "phi3": FamilySpec("Phi3Config", "Phi3ForCausalLM", dict(pad_token_id=0, bos_token_id=1,
                                                            eos_token_id=2, sliding_window=16),
                       sliding_window=16),
    # 4 layers: two groups of (sliding, full) in the outer scan. Soft caps low enough to bite.
    "gemma2": FamilySpec("Gemma2Config", "Gemma2ForCausalLM", dict(
        num_hidden_layers=4, head_dim=16, sliding_window=8, query_pre_attn_scalar=24,
        attn_logit_softcapping=5.0, final_logit_softcapping=30.0), sliding_window=8, seed=1),
    # 5 layers (sliding, sliding, full) + a partial group (sliding, sliding); local and global
    # RoPE bases differ and the global one is linearly scaled, as in Gemma 3 4B.
    "gemma3": FamilySpec("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        num_hidden_layers=5, head_dim=32, sliding_window=8, query_pre_attn_scalar=24,
        layer_types=["sliding_attention", "sliding_attention", "full_attention",
                     "sliding_attention", "sliding_attention"],
        rope_parameters={"full_attention": dict(rope_type="linear", factor=4.0, rope_theta=1000000.0),
                         "sliding_attention": dict(rope_type="default", rope_theta=10000.0)}),
        sliding_window=8),
}


def smollm2_tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(resolve_model_source(next(iter(KNOWN_MODELS))))


def write_tokenizer(tokenizer: Tokenizer, path: Path) -> None:
    tokenizer.backend.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}))


def build_hf_model(spec: FamilySpec, vocab_size: int):
    """A random transformers model of the family, norms and biases redrawn (eval mode)."""
    import torch
    import transformers

    torch.manual_seed(spec.seed)
    config = getattr(transformers, spec.config_class)(vocab_size=vocab_size, **{**SMALL, **spec.config})
    model = getattr(transformers, spec.model_class)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.3 * torch.randn_like(p))
            elif "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return model


def make_hf_model(spec: FamilySpec, path: Path, tokenizer: Tokenizer):
    """build_hf_model, saved with save_pretrained (safetensors) and the tokenizer beside it."""
    model = build_hf_model(spec, tokenizer.vocab_size)
    model.save_pretrained(path, safe_serialization=True)
    write_tokenizer(tokenizer, path)
    return model


def hf_logits(model, ids: list[int]) -> np.ndarray:
    """f32[T, V] logits of transformers at every position of ids."""
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def hf_greedy(model, ids: list[int], num_tokens: int) -> tuple[list[int], list[float]]:
    """Greedy continuation by recomputing the whole sequence each step (no KV cache on the
    reference side), with the top-1 minus top-2 logit margin of each choice."""
    tokens, margins = list(ids), []
    for _ in range(num_tokens):
        last = hf_logits(model, tokens)[-1]
        top2 = np.sort(last)[-2:]
        margins.append(float(top2[1] - top2[0]))
        tokens.append(int(last.argmax()))
    return tokens[len(ids):], margins
