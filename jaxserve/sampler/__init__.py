"""The sampler as an ordered list of stages (see pipeline.py); the names the engine and runner use."""
from jaxserve.sampler.pipeline import STAGES, SampleResult, SamplingArrays, build_sampling, process_logits, sample
from jaxserve.sampler.stage import MASKED, PackTimes

__all__ = ["MASKED", "PackTimes", "STAGES", "SampleResult", "SamplingArrays", "build_sampling",
           "process_logits", "sample"]
