"""jaxserve: an LLM serving engine on JAX.

    from jaxserve import LLM, SamplingParams
    llm = LLM("configs/smollm2-135m.yaml")
    print(llm.generate(["Hello"], SamplingParams(max_tokens=16))[0].text)
"""
from jaxserve.config import EngineConfig, load_config
from jaxserve.sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams", "EngineConfig", "load_config"]


def __getattr__(name):
    # LLM pulls in JAX and the model; import it only when asked so `jaxserve.config` stays light.
    if name == "LLM":
        from jaxserve.llm import LLM
        return LLM
    raise AttributeError(name)
