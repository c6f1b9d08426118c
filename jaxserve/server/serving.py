"""The work behind the routes: request -> token ids + SamplingParams -> AsyncEngine -> response.

    route (app.py)        pydantic request (protocol.py)
      -> OpenAIServing    prompt -> token ids; fields -> SamplingParams (ValueError -> 400)
      -> AsyncEngine      generate(): SequenceDelta stream; refusals -> 429 / 503
      -> here again       deltas -> one JSON response, or SSE chunks ending in `data: [DONE]`

Every failure leaves as an APIError, which app.py renders in OpenAI's error shape
`{"error": {"message", "type", "param", "code"}}` with its status (and Retry-After for 429).
Request metrics (TTFT, inter-token latency, e2e latency, finish reasons) are observed here.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, TypeVar

from jaxserve.errors import EngineDeadError, EngineNotReadyError, EngineOverloadedError, RequestFailedError
from jaxserve.interfaces import ServingEngine
from jaxserve.metrics import ServerMetrics
from jaxserve.outputs import FinishReason, SequenceDelta, TokenLogprob
from jaxserve.sampling_defaults import served_defaults
from jaxserve.sampling_params import SamplingParams, short_repr
from jaxserve.server import protocol as p
from jaxserve.server import tool_calls
from jaxserve.server.admission import find_invalid_text, text_fits
from jaxserve.server.api_errors import APIError, bad_request
from jaxserve.structured import StructuredOutput

_T = TypeVar("_T")


_LEADING_NAME = re.compile(r"^([a-z_][a-z0-9_.]*)\b")


def from_value_error(e: ValueError, rename: dict[str, str] | None = None) -> APIError:
    """ValueError("field must ..., got ...") -> 400 with param = that field (API spelling)."""
    message = str(e)
    m = _LEADING_NAME.match(message)
    param = (rename or {}).get(m.group(1), m.group(1)) if m else None
    return bad_request(message, param)


def from_engine_error(e: Exception) -> APIError:
    if isinstance(e, EngineOverloadedError):
        return APIError(429, str(e), type="rate_limit_error", code="rate_limit_exceeded",
                        headers={"Retry-After": str(e.retry_after_s)})
    if isinstance(e, (EngineNotReadyError, EngineDeadError)):
        return APIError(503, str(e), type="service_unavailable_error", code="engine_unavailable")
    raise TypeError(f"not an engine error: {e!r}")


def structured_from_request(req: p._SamplingFields) -> StructuredOutput | None:
    """The one constraint a request asks for (response_format, structured_outputs or guided_*).

    Raises APIError 400 naming the field when two are given or one is malformed.
    """
    found: list[tuple[str, dict]] = []
    rf = req.response_format
    if rf is not None and rf.type == "json_object":
        found.append(("response_format", {"json_object": True}))
    elif rf is not None and rf.type == "json_schema":
        if rf.json_schema is None or rf.json_schema.schema_ is None:
            raise bad_request("response_format.json_schema.schema is required for type json_schema",
                              "response_format.json_schema")
        found.append(("response_format", {"json": rf.json_schema.schema_}))
    so = req.structured_outputs
    if so is not None:
        given = {k: v for k, v in (("json", so.json_), ("regex", so.regex), ("choice", so.choice),
                                   ("grammar", so.grammar)) if v is not None}
        if len(given) != 1:
            raise bad_request(f"structured_outputs must set exactly one of json, regex, choice and "
                              f"grammar, got {sorted(given) or 'none'}", "structured_outputs")
        found.append(("structured_outputs", given))
    for name, key in (("guided_json", "json"), ("guided_regex", "regex"), ("guided_choice", "choice"),
                      ("guided_grammar", "grammar")):
        if getattr(req, name) is not None:
            found.append((name, {key: getattr(req, name)}))
    if not found:
        return None
    if len(found) > 1:
        raise bad_request(f"only one structured-output constraint may be given, got "
                          f"{', '.join(name for name, _ in found)}", found[1][0])
    name, fields = found[0]
    if "choice" in fields:
        fields = {"choice": tuple(fields["choice"])}
    try:
        return StructuredOutput(**fields)
    except ValueError as e:
        raise bad_request(f"{name}: {e}", name) from None


def _structured_param(req: p._SamplingFields) -> str:
    for name in ("response_format", "structured_outputs", "guided_json", "guided_regex", "guided_choice",
                 "guided_grammar"):
        if getattr(req, name) is not None:
            return name
    return "response_format"


def _request_ids(prefix: str, client_request_id: str | None) -> tuple[str, str]:
    """(the id the response shows, the engine's id): the client's X-Request-Id names the response,
    a uuid keeps engine ids unique even when two clients send the same one."""
    unique = uuid.uuid4().hex
    if client_request_id is None:
        return f"{prefix}-{unique}", f"{prefix}-{unique}"
    return f"{prefix}-{client_request_id}", f"{prefix}-{client_request_id}-{unique}"


def _sse(obj: Any) -> str:
    data = obj.model_dump_json() if hasattr(obj, "model_dump_json") else json.dumps(obj)
    return f"data: {data}\n\n"


_DONE = "data: [DONE]\n\n"


class _Tracker:
    """Observes one request's latency metrics as its deltas pass by."""

    def __init__(self, metrics: ServerMetrics, arrival_s: float):
        self.metrics, self.arrival_s = metrics, arrival_s
        self.first_token_s: float | None = None
        self.last_s: dict[int, float] = {}
        self.reason: str | None = None
        self.num_completion_tokens = 0
        self.closed = False

    def on_delta(self, d: SequenceDelta) -> None:
        now = time.monotonic()
        if d.token_ids:
            self.num_completion_tokens += len(d.token_ids)
            if self.first_token_s is None:
                self.first_token_s = now
                self.metrics.time_to_first_token.observe(now - self.arrival_s)
            prev = self.last_s.get(d.index)
            if prev is not None:
                self.metrics.inter_token_latency.observe(now - prev)
            self.last_s[d.index] = now
        if d.finished and d.index == 0:
            self.reason = d.finish_reason.value

    def close(self) -> None:
        """Called when the request ends, however it ends; counts it once."""
        if self.closed:
            return
        self.closed = True
        if self.reason == FinishReason.ERROR.value:
            return
        self.metrics.request_success.labels(self.reason or FinishReason.ABORT.value).inc()
        self.metrics.e2e_request_latency.observe(time.monotonic() - self.arrival_s)


def _finish(reason: FinishReason | None) -> str | None:
    return None if reason is None else reason.value


class OpenAIServing:
    """Turns OpenAI requests into engine requests and engine deltas into OpenAI responses."""

    def __init__(self, engine: ServingEngine, metrics: ServerMetrics, tokenizer_threads: int = 2):
        self.engine = engine
        self.metrics = metrics
        self.tokenizer = engine.tokenizer
        self.model_name = engine.model_name
        self.max_model_len = engine.max_model_len
        self._token_text: dict[int, str] = {}
        # Tokenizing, templating and detokenizing a request can take seconds for a large one:
        # they run here, so the event loop (every other request, /health) never waits on them.
        self._pool = ThreadPoolExecutor(max_workers=tokenizer_threads, thread_name_prefix="jaxserve-tokenize")
        self._max_token_chars = self.tokenizer.max_token_chars
        # Unset sampling fields: the model's recommendation, else llama.cpp's (sampling_defaults.py).
        self.sampling_defaults = served_defaults(self.tokenizer, engine.config)

    async def _off_loop(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def check_text(req: Any) -> None:
        """400 naming the first field that holds invalid text (lone surrogates, invalid UTF-8)."""
        where = find_invalid_text(req)
        if where is not None:
            raise bad_request(f"{where} is not valid UTF-8 text (it holds a lone surrogate or an "
                              f"invalid byte)", where)

    async def _structured(self, req: p._SamplingFields) -> StructuredOutput | None:
        """The request's constraint, compiled on the tokenizer threads (the engine finds it cached)."""
        spec = structured_from_request(req)
        return None if spec is None else await self._compile(spec, _structured_param(req))

    async def _compile(self, spec: StructuredOutput, param: str) -> StructuredOutput:
        grammars = self.engine.grammars
        if grammars is None:
            raise bad_request(f"{param} (structured outputs) is not supported by this server", param)
        try:
            await self._off_loop(grammars.compile, spec)
        except ValueError as e:
            raise bad_request(f"{param}: {e}", param) from None
        return spec

    def _check_text_length(self, num_chars: int, param: str) -> None:
        if not text_fits(num_chars, self.max_model_len, self._max_token_chars):
            raise bad_request(f"{param} has {num_chars} characters, more than model.max_model_len "
                              f"{self.max_model_len} tokens can hold", param)

    # -- small endpoints -------------------------------------------------------------------

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise APIError(404, f"The model {short_repr(model)} does not exist; this server serves "
                                f"`{self.model_name}`.", param="model", code="model_not_found")

    def models(self) -> p.ModelList:
        return p.ModelList(data=[p.ModelCard(id=self.model_name, max_model_len=self.max_model_len)])

    async def tokenize(self, req: p.TokenizeRequest) -> p.TokenizeResponse:
        self.check_model(req.model)
        self.check_text(req)
        if (req.prompt is None) == (req.messages is None):
            raise bad_request("exactly one of prompt and messages must be given", "prompt")
        if req.messages is not None:
            ids = await self._off_loop(self._encode_chat, req.messages, req.add_generation_prompt)
            param = "messages"
        else:
            self._check_text_length(len(req.prompt), "prompt")
            ids = await self._off_loop(self.tokenizer.encode, req.prompt, req.add_special_tokens)
            param = "prompt"
        if len(ids) > self.max_model_len:
            raise bad_request(f"{param} has {len(ids)} tokens, more than model.max_model_len "
                              f"{self.max_model_len}", param)
        return p.TokenizeResponse(tokens=ids, count=len(ids), max_model_len=self.max_model_len)

    async def detokenize(self, req: p.DetokenizeRequest) -> p.DetokenizeResponse:
        self.check_model(req.model)
        if len(req.tokens) > self.max_model_len:
            raise bad_request(f"tokens holds {len(req.tokens)} ids, more than model.max_model_len "
                              f"{self.max_model_len}", "tokens")
        self._check_token_ids(req.tokens, "tokens")
        return p.DetokenizeResponse(prompt=await self._off_loop(self.tokenizer.decode, req.tokens))

    # -- completions -----------------------------------------------------------------------

    async def create_completion(self, req: p.CompletionRequest, client_request_id: str | None = None
                                ) -> p.CompletionResponse | AsyncIterator[str]:
        arrival_s = time.monotonic()
        self.check_model(req.model)
        for name, bad in (("echo", req.echo), ("suffix", req.suffix), ("logit_bias", req.logit_bias)):
            if bad:
                raise bad_request(f"{name} is not supported by this server", name)
        if req.best_of is not None and req.best_of != req.n:
            raise bad_request(f"best_of must equal n (no server-side ranking), got {req.best_of}", "best_of")
        self.check_text(req)
        prompt_ids, prompt_text = await self._off_loop(self._completion_prompt, req.prompt)
        max_tokens = self._max_tokens(prompt_ids, req.max_tokens, "max_tokens", default=16)
        structured = await self._structured(req)
        params = self._params(req, max_tokens=max_tokens, logprobs=req.logprobs, rename={},
                              structured=structured)
        request_id, engine_id = _request_ids("cmpl", client_request_id)
        deltas, tracker = await self._open(engine_id, prompt_ids, params, prompt_text, arrival_s, {})
        created = int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return self._completion_stream(request_id, engine_id, created, len(prompt_ids), deltas,
                                           tracker, include_usage, req.logprobs is not None)
        texts, lps, reasons = await self._collect(deltas, tracker, params.n)
        choices = [p.CompletionChoice(index=i, text=texts[i], finish_reason=_finish(reasons[i]),
                                      logprobs=self._completion_logprobs(lps[i], 0)
                                      if req.logprobs is not None else None)
                   for i in range(params.n)]
        return p.CompletionResponse(id=request_id, created=created, model=self.model_name,
                                    choices=choices, usage=self._usage(len(prompt_ids), tracker))

    async def _completion_stream(self, request_id: str, engine_id: str, created: int, num_prompt: int,
                                 deltas: AsyncIterator[SequenceDelta], tracker: _Tracker,
                                 include_usage: bool, want_logprobs: bool) -> AsyncIterator[str]:
        offsets: dict[int, int] = {}
        try:
            async for d in self._checked(deltas, tracker):
                if not (d.text or d.finished or (want_logprobs and d.logprobs)):
                    continue
                lps = self._completion_logprobs(d.logprobs or [], offsets.get(d.index, 0)) \
                    if want_logprobs else None
                offsets[d.index] = offsets.get(d.index, 0) + len(d.text)
                choice = p.CompletionChoice(index=d.index, text=d.text, logprobs=lps,
                                            finish_reason=_finish(d.finish_reason))
                yield _sse(p.CompletionResponse(id=request_id, created=created, model=self.model_name,
                                                choices=[choice]))
            if include_usage:
                yield _sse(p.CompletionResponse(id=request_id, created=created, model=self.model_name,
                                                choices=[], usage=self._usage(num_prompt, tracker)))
        except APIError as e:
            yield _sse(e.body())
        finally:
            self.engine.abort(engine_id)
            tracker.close()
        yield _DONE

    # -- chat completions ------------------------------------------------------------------

    async def create_chat_completion(self, req: p.ChatCompletionRequest, client_request_id: str | None = None
                                     ) -> p.ChatCompletionResponse | AsyncIterator[str]:
        arrival_s = time.monotonic()
        self.check_model(req.model)
        if req.logit_bias:
            raise bad_request("logit_bias is not supported by this server", "logit_bias")
        if req.top_logprobs is not None and not req.logprobs:
            raise bad_request("top_logprobs requires logprobs to be true", "top_logprobs")
        self.check_text(req)
        mode = tool_calls.tool_mode(req)
        prompt_ids = await self._off_loop(self._encode_chat, req.messages, req.add_generation_prompt,
                                          req.tools if mode else None)
        name = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        max_tokens = self._max_tokens(prompt_ids, requested, name, default=None)
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        rename = {"max_tokens": name, "logprobs": "top_logprobs"}
        structured = await self._structured(req)
        if mode in ("required", "named"):
            if structured is not None:
                raise bad_request(f"{_structured_param(req)} cannot be combined with tool_choice "
                                  f"{'required' if mode == 'required' else 'naming a function'}", "tool_choice")
            structured = await self._compile(tool_calls.call_constraint(req, mode), "tools")
        params = self._params(req, max_tokens=max_tokens, logprobs=logprobs, rename=rename,
                              structured=structured)
        request_id, engine_id = _request_ids("chatcmpl", client_request_id)
        deltas, tracker = await self._open(engine_id, prompt_ids, params, None, arrival_s, rename)
        created = int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return self._chat_stream(request_id, engine_id, created, len(prompt_ids), params.n, deltas,
                                     tracker, include_usage, req.logprobs,
                                     (mode, req.tools) if mode else None)
        texts, lps, reasons = await self._collect(deltas, tracker, params.n)
        choices = []
        for i in range(params.n):
            message, reason = p.ChatMessageOut(content=texts[i]), _finish(reasons[i])
            if mode:
                content, calls = tool_calls.parse_tool_calls(texts[i], mode, req.tools)
                if calls:
                    message = p.ChatMessageOut(content=content, tool_calls=calls)
                    reason = "tool_calls" if reason == "stop" else reason
            choices.append(p.ChatChoice(index=i, message=message, finish_reason=reason,
                                        logprobs=self._chat_logprobs(lps[i]) if req.logprobs else None))
        return p.ChatCompletionResponse(id=request_id, created=created, model=self.model_name,
                                        choices=choices, usage=self._usage(len(prompt_ids), tracker))

    async def _chat_stream(self, request_id: str, engine_id: str, created: int, num_prompt: int, n: int,
                           deltas: AsyncIterator[SequenceDelta], tracker: _Tracker,
                           include_usage: bool, want_logprobs: bool,
                           tools: tuple[str, list[p.ToolDef]] | None = None) -> AsyncIterator[str]:
        """SSE chunks; with tools in play a choice's text is held back and sent whole at its end,
        as tool-call deltas when it holds calls (a call's JSON is only known to parse then)."""
        def chunk(choices: list[p.ChatStreamChoice], usage: p.UsageInfo | None = None) -> str:
            return _sse(p.ChatCompletionChunk(id=request_id, created=created, model=self.model_name,
                                              choices=choices, usage=usage))

        held: dict[int, list[str]] = {}

        try:
            for i in range(n):
                yield chunk([p.ChatStreamChoice(index=i, delta=p.DeltaMessage(role="assistant", content=""))])
            async for d in self._checked(deltas, tracker):
                if not (d.text or d.finished or (want_logprobs and d.logprobs)):
                    continue
                lps = self._chat_logprobs(d.logprobs or []) if want_logprobs else None
                reason = _finish(d.finish_reason)
                if tools is not None:
                    held.setdefault(d.index, []).append(d.text)
                    if not d.finished:
                        continue
                    delta, reason = self._tool_delta("".join(held.pop(d.index)), reason, *tools)
                else:
                    delta = p.DeltaMessage(content=d.text) if d.text else p.DeltaMessage()
                yield chunk([p.ChatStreamChoice(index=d.index, delta=delta, logprobs=lps,
                                                finish_reason=reason)])
            if include_usage:
                yield chunk([], self._usage(num_prompt, tracker))
        except APIError as e:
            yield _sse(e.body())
        finally:
            self.engine.abort(engine_id)
            tracker.close()
        yield _DONE

    @staticmethod
    def _tool_delta(text: str, reason: str | None, mode: str, tools: list[p.ToolDef]
                    ) -> tuple[p.DeltaMessage, str | None]:
        content, calls = tool_calls.parse_tool_calls(text, mode, tools)
        if not calls:
            return p.DeltaMessage(content=text or None), reason
        deltas = [p.ToolCallDelta(index=i, id=c.id, type="function", function=c.function)
                  for i, c in enumerate(calls)]
        return (p.DeltaMessage(content=content, tool_calls=deltas),
                "tool_calls" if reason == "stop" else reason)

    # -- shared steps ----------------------------------------------------------------------

    def _completion_prompt(self, prompt: Any) -> tuple[list[int], str | None]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise bad_request(f"prompt must be one string or one token list (batches are not "
                                  f"supported), got a list of {len(prompt)}", "prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            if not prompt:
                raise bad_request("prompt must not be empty", "prompt")
            self._check_text_length(len(prompt), "prompt")
            return self.tokenizer.encode(prompt, add_special_tokens=True), prompt
        self._check_token_ids(prompt, "prompt")
        return list(prompt), None

    def _check_token_ids(self, ids: list[int], param: str) -> None:
        if not ids and param == "prompt":
            raise bad_request("prompt must not be empty", param)
        vocab = self.tokenizer.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise bad_request(f"{param} must hold token ids in [0, {vocab}), got {bad[0]}", param)

    def _encode_chat(self, messages: list[p.ChatMessage], add_generation_prompt: bool,
                     tools: list[p.ToolDef] | None = None) -> list[int]:
        convo = []
        for m in messages:
            content = m.content if isinstance(m.content, str) or m.content is None \
                else "".join(part.text for part in m.content)
            content = tool_calls.history_text(m, content or "")
            convo.append({"role": "system" if m.role == "developer" else m.role, "content": content})
        extra: dict = {}
        if tools:
            convo, extra = tool_calls.render_tools(
                convo, tools, tool_calls.template_takes_tools(getattr(self.tokenizer, "chat_template", "")))
        # The template only adds text: contents that cannot fit are refused before rendering it.
        self._check_text_length(sum(len(m["content"]) for m in convo), "messages")
        try:
            text = self.tokenizer.apply_chat_template(convo, add_generation_prompt=add_generation_prompt,
                                                      **extra)
        except ValueError as e:   # an empty conversation, or the template's own raise_exception
            raise bad_request(str(e), "messages") from None
        # The template writes the special tokens itself.
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _max_tokens(self, prompt_ids: list[int], requested: int | None, name: str,
                    default: int | None) -> int:
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise bad_request(f"prompt has {len(prompt_ids)} tokens, longer than model.max_model_len "
                              f"{self.max_model_len} allows (with >= 1 new token)", "prompt")
        if requested is None:
            return room if default is None else min(default, room)
        if requested > room:
            raise bad_request(f"{name} must be <= {room} (model.max_model_len {self.max_model_len} "
                              f"minus {len(prompt_ids)} prompt tokens), got {requested}", name)
        return requested

    def _params(self, req: p._SamplingFields, max_tokens: int, logprobs: int | None,
                rename: dict[str, str], structured: StructuredOutput | None = None) -> SamplingParams:
        fields = dict(structured=structured,
            n=req.n, max_tokens=max_tokens, presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty, seed=req.seed, ignore_eos=req.ignore_eos,
            stop=[req.stop] if isinstance(req.stop, str) else list(req.stop or []),
            stop_token_ids=list(req.stop_token_ids or []), logprobs=logprobs,
            skip_special_tokens=req.skip_special_tokens)
        for name, value in (("temperature", req.temperature), ("top_p", req.top_p), ("top_k", req.top_k),
                            ("min_p", req.min_p), ("repetition_penalty", req.repetition_penalty)):
            value = value if value is not None else self.sampling_defaults.get(name)
            if value is not None:
                fields[name] = value
        try:
            return SamplingParams(**fields)
        except ValueError as e:
            raise from_value_error(e, rename) from None

    async def _open(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                    prompt: str | None, arrival_s: float, rename: dict[str, str]
                    ) -> tuple[AsyncIterator[SequenceDelta], _Tracker]:
        """Start generation and wait for the first delta, so refusals still become HTTP errors.

        A request refused or failed here is not counted; one that ends before its first token
        (the client left, so this task is cancelled, or the server aborted it) counts as an abort.
        """
        tracker = _Tracker(self.metrics, arrival_s)
        gen = self.engine.generate(request_id, prompt_ids, params, prompt=prompt)
        try:
            first = await gen.__anext__()
        except ValueError as e:
            raise from_value_error(e, rename) from None
        except (EngineOverloadedError, EngineNotReadyError, EngineDeadError) as e:
            raise from_engine_error(e) from None
        except RequestFailedError as e:
            raise APIError(500, str(e), type="internal_server_error", code="request_failed") from None
        except StopAsyncIteration:
            tracker.close()
            raise APIError(503, "request was aborted before its first token", type="service_unavailable_error",
                           code="aborted") from None
        except asyncio.CancelledError:
            tracker.close()   # generate()'s own cleanup has already asked the engine to abort it
            raise

        async def chained() -> AsyncIterator[SequenceDelta]:
            yield first
            async for d in gen:
                yield d

        return chained(), tracker

    async def _checked(self, deltas: AsyncIterator[SequenceDelta], tracker: _Tracker
                       ) -> AsyncIterator[SequenceDelta]:
        """Feed the tracker; turn engine failures into APIError (500 / 503)."""
        try:
            async for d in deltas:
                tracker.on_delta(d)
                if d.finish_reason == FinishReason.ERROR:
                    tracker.reason = FinishReason.ERROR.value
                    raise APIError(500, f"generation failed: {d.error}", type="internal_server_error")
                yield d
        except EngineDeadError as e:
            tracker.reason = FinishReason.ERROR.value
            raise from_engine_error(e) from None

    async def _collect(self, deltas: AsyncIterator[SequenceDelta], tracker: _Tracker, n: int
                       ) -> tuple[list[str], list[list[TokenLogprob]], list[FinishReason | None]]:
        texts: list[list[str]] = [[] for _ in range(n)]
        lps: list[list[TokenLogprob]] = [[] for _ in range(n)]
        reasons: list[FinishReason | None] = [None] * n
        try:
            async for d in self._checked(deltas, tracker):
                texts[d.index].append(d.text)
                lps[d.index].extend(d.logprobs or [])
                if d.finished:
                    reasons[d.index] = d.finish_reason
        finally:
            tracker.close()
        return ["".join(t) for t in texts], lps, reasons

    def _usage(self, num_prompt: int, tracker: _Tracker) -> p.UsageInfo:
        done = tracker.num_completion_tokens
        return p.UsageInfo(prompt_tokens=num_prompt, completion_tokens=done, total_tokens=num_prompt + done)

    def _token(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            self._token_text[token_id] = text
        return text

    def _completion_logprobs(self, lps: list[TokenLogprob], offset: int) -> p.CompletionLogprobs:
        out = p.CompletionLogprobs()
        for lp in lps:
            token = self._token(lp.token_id)
            out.tokens.append(token)
            out.token_logprobs.append(lp.logprob)
            out.top_logprobs.append({self._token(t): v for t, v in lp.top} if lp.top else None)
            out.text_offset.append(offset)
            offset += len(token)
        return out

    def _chat_logprobs(self, lps: list[TokenLogprob]) -> p.ChatLogprobs:
        def entry(token_id: int, logprob: float) -> p.TopLogprob:
            token = self._token(token_id)
            return p.TopLogprob(token=token, logprob=logprob, bytes=list(token.encode("utf-8")))

        content = [p.ChatLogprobsContent(**entry(lp.token_id, lp.logprob).model_dump(),
                                         top_logprobs=[entry(t, v) for t, v in lp.top]) for lp in lps]
        return p.ChatLogprobs(content=content)
