"""Reading llama.cpp's GGUF metadata (`{arch}.embedding_length`, ...) into ModelArch fields."""
from __future__ import annotations

from typing import Any

from jaxserve.model.arch import ModelArch, RopeScaling
from jaxserve.model.families.hf_config import MissingConfigField, yarn_mscale


class GGUFMeta:
    """A GGUF file's metadata and tensor names, with errors that name the key.

    gguf_file: a jaxserve.model.gguf_metadata.GGUFFile (its `metadata` dict of plain values and
    its `tensors`' names are all that is read).
    """

    def __init__(self, gguf_file, source: str = "GGUF"):
        self.metadata: dict[str, Any] = gguf_file.metadata
        self.source = source
        self.arch_name = self.get("general.architecture")
        self.prefix = f"{self.arch_name}."
        self.tensor_names = {t.name for t in gguf_file.tensors}

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise MissingConfigField(f"{self.source} lacks metadata {key!r}")
        return value

    def arch_key(self, key: str, default: Any = None, required: bool = False) -> Any:
        return self.require(self.prefix + key) if required else self.get(self.prefix + key, default)


def _rope_scaling(m: GGUFMeta) -> RopeScaling | None:
    kind = m.arch_key("rope.scaling.type", "none")
    if "rope_freqs.weight" in m.tensor_names:
        # Llama 3.1's scaling, which llama.cpp stores as per-frequency factors, not parameters.
        raise ValueError(f"{m.source}: rope_freqs.weight (Llama 3.1 RoPE scaling in GGUF) is not "
                         "supported yet; load the Hugging Face checkpoint instead")
    if kind == "none":
        return None
    if kind == "linear":
        return RopeScaling(rope_type="linear", factor=float(m.arch_key("rope.scaling.factor", required=True)))
    if kind == "yarn":
        return _yarn_scaling(m)
    raise ValueError(f"{m.source}: GGUF rope scaling {kind!r} is not supported")


# YaRN keys that change llama.cpp's rope from the defaults we reproduce; none is written by the
# converters of the families we read (Qwen2 writes type, factor and original_context_length).
_YARN_OVERRIDES = ("rope.scaling.attn_factor", "rope.scaling.yarn_attn_factor", "rope.scaling.yarn_beta_fast",
                   "rope.scaling.yarn_beta_slow", "rope.scaling.yarn_ext_factor",
                   "rope.scaling.yarn_log_multiplier")


def _yarn_scaling(m: GGUFMeta) -> RopeScaling:
    """llama.cpp's YaRN with its defaults (ext_factor 1, beta_fast 32, beta_slow 1, corr dims
    floored / ceiled, cos and sin times 1 + 0.1 ln factor) is transformers' yarn with its defaults."""
    for key in _YARN_OVERRIDES:
        if m.arch_key(key) is not None:
            raise ValueError(f"{m.source}: GGUF metadata {m.prefix + key} (a YaRN override) is not supported")
    factor = float(m.arch_key("rope.scaling.factor", required=True))
    original = m.arch_key("rope.scaling.original_context_length") or m.arch_key("context_length", required=True)
    return RopeScaling(rope_type="yarn", factor=factor, original_max_position=int(original),
                       attention_factor=yarn_mscale(factor))


def llama_like_gguf_arch(m: GGUFMeta, family: str, **fields: Any) -> ModelArch:
    hidden = int(m.arch_key("embedding_length", required=True))
    heads = int(m.arch_key("attention.head_count", required=True))
    vocab = m.arch_key("vocab_size") or len(m.metadata["tokenizer.ggml.tokens"])
    window = m.arch_key("attention.sliding_window")
    base = dict(
        family=family, vocab_size=int(vocab), hidden_size=hidden,
        intermediate_size=int(m.arch_key("feed_forward_length", required=True)),
        num_layers=int(m.arch_key("block_count", required=True)), num_heads=heads,
        num_kv_heads=int(m.arch_key("attention.head_count_kv", heads)),
        head_dim=int(m.arch_key("attention.key_length", hidden // heads)),
        rope_theta=float(m.arch_key("rope.freq_base", 10000.0)), rope_scaling=_rope_scaling(m),
        rms_norm_eps=float(m.arch_key("attention.layer_norm_rms_epsilon", 1e-5)),
        max_position=int(m.arch_key("context_length", 8192)),
        tie_word_embeddings="output.weight" not in m.tensor_names,
        qkv_bias="blk.0.attn_q.bias" in m.tensor_names,
        sliding_window=None if window is None else int(window),
    )
    base.update(fields)
    return ModelArch(**base)
