"""The model registry: architecture name -> the family that reads, builds and runs it.

A checkpoint names its architecture: a Hugging Face `config.json` in `architectures[0]`
(`"Qwen2ForCausalLM"`), a GGUF file in `general.architecture` (`"qwen2"`). The loaders look the
name up here and get a `ModelFamily`; the ModelArch they build carries `family`, by which the
runner, the random initializer and the sharding rules find the same entry again. Nothing outside
the families imports a model module by name. An architecture not listed fails at load with an
error naming it and listing the supported ones (vLLM and tpu-inference keep the same kind of table,
architecture name -> model class).

Adding a family is one module under `jaxserve/model/families/` plus one line in _FAMILY_MODULES.
The module defines `FAMILY = ModelFamily(...)`, which must provide:

  name               the registry key, stored in ModelArch.family (and in the orbax cache's arch)
  hf_architectures   the `architectures[0]` names it serves
  gguf_architectures the `general.architecture` names it serves (may be empty)
  read_hf_config     config.json dict -> ModelArch; a field it needs and lacks raises
                     MissingConfigField naming it (families/hf_config.py has the shared readers)
  read_gguf_config   GGUF metadata -> ModelArch, or None where no GGUF mapping exists
  convert_layer      one layer's checkpoint tensors (Hugging Face names, [out, in] matrices) ->
                     its Flax params {module: {param: array}}; fused tensors are split here.
                     `LayerTensors` checks each tensor's presence and shape against the module.
  gguf_tensor_names  Hugging Face layer suffix -> llama.cpp's, for the tensors convert_layer reads
  gguf_permutes_qk   whether llama.cpp's converter permuted q/k rows (Llama's interleaved RoPE)
  forward            (params, kv, batch, *, arch, opts) -> (logits f32[N, V], kv)
  layer_param_shapes arch -> one layer's {module: {param: ShapeDtypeStruct}}
  init_random_params (arch, key, dtype) -> params, for tests and benchmarks
  tp_column, tp_row  modules whose kernel [L, in, out] is split over `out` (and bias) / over `in`
  arrange_layers     optional: stacked {module: {param: [L, ...]}} -> the layout forward reads
                     (Gemma: one stack per layer kind); by default the stack itself
  hf_norm_offset     optional: added to every RMSNorm weight of a Hugging Face checkpoint
                     (Gemma stores w of a (1 + w) scale; llama.cpp adds the 1 when converting)

All params share one layout (see layers.py), so bf16 lowering and sharding need nothing more.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

# One line per family module; each defines FAMILY.
_FAMILY_MODULES = (
    "jaxserve.model.families.llama",
    "jaxserve.model.families.qwen2",
    "jaxserve.model.families.qwen3",
    "jaxserve.model.families.phi3",
    "jaxserve.model.families.gemma2",
    "jaxserve.model.families.gemma3",
)


class UnsupportedArchitecture(ValueError):
    """A checkpoint names an architecture no family serves."""


@dataclass(frozen=True, kw_only=True)
class ModelFamily:
    name: str
    hf_architectures: tuple[str, ...]
    gguf_architectures: tuple[str, ...]
    read_hf_config: Callable
    read_gguf_config: Callable | None
    convert_layer: Callable
    gguf_tensor_names: dict[str, str]
    gguf_permutes_qk: bool
    forward: Callable
    layer_param_shapes: Callable
    init_random_params: Callable
    tp_column: tuple[str, ...]
    tp_row: tuple[str, ...]
    arrange_layers: Callable = lambda layers, arch: layers   # noqa: E731 (an instance field)
    hf_norm_offset: float = 0.0


_loaded: dict[str, ModelFamily] | None = None


def families() -> dict[str, ModelFamily]:
    """All registered families by name (imported on first use, so the registry has no import cycle)."""
    global _loaded
    if _loaded is None:
        found = [importlib.import_module(m).FAMILY for m in _FAMILY_MODULES]
        _loaded = {f.name: f for f in found}
    return _loaded


def get_family(name: str) -> ModelFamily:
    """The family a ModelArch names."""
    try:
        return families()[name]
    except KeyError:
        raise UnsupportedArchitecture(
            f"model family {name!r} is not registered (registered: {', '.join(families())})") from None


def family_for_hf(architecture: str, source: str = "config.json") -> ModelFamily:
    for family in families().values():
        if architecture in family.hf_architectures:
            return family
    supported = sorted(a for f in families().values() for a in f.hf_architectures)
    raise UnsupportedArchitecture(f"{source}: architecture {architecture!r} is not supported; "
                                  f"supported: {', '.join(supported)}")


def family_for_gguf(architecture: str, source: str = "GGUF") -> ModelFamily:
    for family in families().values():
        if architecture in family.gguf_architectures and family.read_gguf_config is not None:
            return family
    supported = sorted(a for f in families().values() if f.read_gguf_config
                       for a in f.gguf_architectures)
    raise UnsupportedArchitecture(f"{source}: GGUF architecture {architecture!r} is not supported; "
                                  f"supported: {', '.join(supported)}")
