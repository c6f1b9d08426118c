"""LLM: the notebook-friendly Python API.

    llm = LLM("configs/smollm2-135m.yaml")          # or LLM(model="/path/model.gguf")
    outs = llm.generate(["Hi", "Tell me a joke"], SamplingParams(max_tokens=32))
    for piece in llm.stream("Once upon a time", SamplingParams(max_tokens=32)):
        print(piece, end="")

It drives the engine in the caller's thread with no event loop, so it works as is inside
Jupyter (where an asyncio loop is already running).
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterator, Sequence as Seq

from jaxserve.config import EngineConfig, load_config, overrides_from_dotted
from jaxserve.engine_factory import make_engine
from jaxserve.outputs import CompletionOutput, RequestOutput
from jaxserve.sampling_params import SamplingParams


class LLM:
    def __init__(self, config: str | Path | EngineConfig | None = None, *, model: str | None = None,
                 warmup: bool = False, **overrides):
        """config: a YAML path or an EngineConfig; model: a .gguf/safetensors path or known name;
        overrides: dotted config keys with '.' written as '__', e.g. scheduler__max_num_seqs=8."""
        dotted = {k.replace("__", "."): v for k, v in overrides.items()}
        if model is not None:
            dotted["model.source"] = model
        if isinstance(config, EngineConfig):
            if dotted:
                raise ValueError("pass overrides in the EngineConfig itself, not as keyword arguments")
            cfg = config.validate()
        else:
            cfg = load_config(config, overrides_from_dotted(dotted))
        self.engine = make_engine(cfg)
        self.tokenizer = self.engine.tokenizer
        self._ids = itertools.count()
        if warmup:
            self.engine.warmup()

    # ----------------------------------------------------------------------------- generate
    def generate(self, prompts: str | Seq[str] | Seq[list[int]],
                 params: SamplingParams | Seq[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """One RequestOutput per prompt, in order. Prompts are strings or token-id lists."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params_list = self._params_list(params, len(prompts))
        ids = []
        for prompt, p in zip(prompts, params_list):
            ids.append(self._add(prompt, p))
        return self._run(ids, prompts, use_tqdm)

    def chat(self, messages: list[dict] | list[list[dict]], params: SamplingParams | None = None,
             use_tqdm: bool = True) -> list[RequestOutput]:
        """messages: one conversation (a list of {role, content}) or a list of them."""
        convs = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True) for c in convs]
        return self.generate(prompts, params, use_tqdm)

    def stream(self, prompt: str | list[int], params: SamplingParams | None = None) -> Iterator[str]:
        """Yield text pieces of one completion as they are produced (the first sample if n > 1)."""
        request_id = self._add(prompt, params or SamplingParams())
        try:
            while request_id in self.engine.requests:
                for d in self.engine.step():
                    if d.request_id == request_id and d.index == 0 and d.text:
                        yield d.text
        finally:
            self.engine.abort_request(request_id)

    # ------------------------------------------------------------------------------ helpers
    def _params_list(self, params, n: int) -> list[SamplingParams]:
        if params is None:
            return [SamplingParams()] * n
        if isinstance(params, SamplingParams):
            return [params] * n
        if len(params) != n:
            raise ValueError(f"params has {len(params)} entries for {n} prompts")
        return list(params)

    def _add(self, prompt, params: SamplingParams) -> str:
        request_id = f"llm-{next(self._ids)}"
        if isinstance(prompt, str):
            token_ids = self.tokenizer.encode(prompt)
            text = prompt
        else:
            token_ids, text = list(prompt), None
        self.engine.add_request(request_id, token_ids, params, prompt=text)
        return request_id

    def _run(self, request_ids: list[str], prompts, use_tqdm: bool) -> list[RequestOutput]:
        pending = {rid: self.engine.requests[rid] for rid in request_ids}
        progress = None
        if use_tqdm and len(request_ids) > 1:
            from tqdm.auto import tqdm
            progress = tqdm(total=len(request_ids), desc="generate", unit="req")
        try:
            remaining = set(request_ids)
            while remaining:
                self.engine.step()
                done = {rid for rid in remaining if rid not in self.engine.requests}
                if progress and done:
                    progress.update(len(done))
                remaining -= done
        except BaseException:
            for rid in request_ids:
                self.engine.abort_request(rid)
            raise
        finally:
            if progress:
                progress.close()
        outputs = []
        for rid, prompt in zip(request_ids, prompts):
            seqs = pending[rid]
            outputs.append(RequestOutput(
                request_id=rid, prompt=prompt if isinstance(prompt, str) else None,
                prompt_token_ids=seqs[0].prompt_ids,
                outputs=[CompletionOutput(s.index, s.text, list(s.output_ids), s.finish_reason,
                                          s.output_logprobs or None) for s in seqs],
                metrics=seqs[0].metrics))
        return outputs
