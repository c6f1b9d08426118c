"""Tool calling on chat completions: prompt the tools in, constrain or parse the calls out.

    tools + tool_choice
      -> render_tools()       the model's own template when it takes `tools`, else a system
                              prompt listing them in the hermes style (<tool_call>{...}</tool_call>)
      -> call_constraint()    "required" or a named function: a JSON schema the output must fit,
                              a list of {"name", "arguments"} objects whose arguments fit that
                              function's parameters; enforced while decoding, so even a small
                              model returns calls that parse
      -> parse_tool_calls()   forced: the JSON list; "auto": every <tool_call>{...}</tool_call>
                              block naming a known function; the rest stays content
"""
from __future__ import annotations

import json
import re
import uuid
from typing import Any

from jaxserve.server import protocol as p
from jaxserve.server.api_errors import bad_request
from jaxserve.structured import StructuredOutput

# The prompt used when a model's chat template does not take `tools` itself.
TOOLS_SYSTEM_PROMPT = (
    "You can call functions. Their signatures are JSON schemas, listed inside <tools></tools>:\n"
    "<tools>\n{tools}\n</tools>\n"
    "To call a function, answer with one <tool_call></tool_call> block per call, each holding a "
    'JSON object {{"name": <function name>, "arguments": <arguments object>}}.'
)
# Calls one forced answer may hold: a small model forced into an open-ended list can otherwise
# repeat calls until max_tokens, and then none of them parses.
MAX_PARALLEL_CALLS = 4
_TOOL_CALL_BLOCK = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)


def tool_mode(req: p.ChatCompletionRequest) -> str | None:
    """None (no tools in play), "auto", "required" or "named"; 400 for choices that cannot work."""


    choice = req.tool_choice
    if not req.tools:
        if choice not in (None, "none"):
            raise bad_request("tool_choice needs tools", "tool_choice")
        return None
    if choice == "none":
        return None
    names = [t.function.name for t in req.tools]
    if len(set(names)) != len(names):
        raise bad_request("tools must have distinct function names", "tools")
    if isinstance(choice, p.NamedToolChoice):
        if choice.function.name not in names:
            raise bad_request(f"tool_choice names {choice.function.name!r}, which is not among tools", "tool_choice")
        return "named"
    return "required" if choice == "required" else "auto"


def template_takes_tools(chat_template: str) -> bool:
    return "tools" in chat_template


def render_tools(convo: list[dict], tools: list[p.ToolDef], template_takes: bool) -> tuple[list[dict], dict]:
    """(messages, extra template variables): tools go to the template, or into a system prompt."""
    specs = [t.model_dump(exclude_none=True) for t in tools]
    if template_takes:
        return convo, {"tools": specs}
    listing = "\n".join(json.dumps(spec["function"], ensure_ascii=False) for spec in specs)
    prompt = TOOLS_SYSTEM_PROMPT.format(tools=listing)
    if convo and convo[0]["role"] == "system":
        return [{"role": "system", "content": f"{convo[0]['content']}\n\n{prompt}"}, *convo[1:]], {}
    return [{"role": "system", "content": prompt}, *convo], {}


def history_text(message: p.ChatMessage, content: str) -> str:
    """An assistant turn's earlier tool calls, written back in the format the model was shown."""
    if not message.tool_calls:
        return content
    blocks = [f'<tool_call>\n{{"name": {json.dumps(c.function.name)}, "arguments": {c.function.arguments}}}\n'
              f"</tool_call>" for c in message.tool_calls]
    return "\n".join(([content] if content else []) + blocks)


def call_constraint(req: p.ChatCompletionRequest, mode: str) -> StructuredOutput:
    """The JSON schema a forced ("required" / named) answer must fit: a list of calls."""
    tools = req.tools or []
    if mode == "named":
        tools = [t for t in tools if t.function.name == req.tool_choice.function.name]
    calls = [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
              "properties": {"name": {"const": t.function.name}, "arguments": _declared_only(t.function.parameters)}}
             for t in tools]
    schema: dict[str, Any] = {"type": "array", "minItems": 1,
                              "items": calls[0] if len(calls) == 1 else {"anyOf": calls}}
    schema["maxItems"] = 1 if req.parallel_tool_calls is False or mode == "named" else MAX_PARALLEL_CALLS
    return StructuredOutput(json=schema)


def _declared_only(parameters: dict | None) -> dict:
    """A function's parameter schema, closed to undeclared arguments unless it says otherwise.

    JSON schema admits any extra key by default, and a small model forced into it can write keys
    until max_tokens; a call carries the arguments the function declares (OpenAI's strict mode
    closes schemas the same way).
    """
    schema = dict(parameters or {"type": "object"})
    if schema.get("type") == "object" and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    return schema


def _call(name: str, arguments: Any) -> p.ToolCall:
    return p.ToolCall(id=f"call_{uuid.uuid4().hex[:24]}",
                      function=p.ToolCallFunction(name=name, arguments=json.dumps(arguments, ensure_ascii=False)))


def parse_tool_calls(text: str, mode: str, tools: list[p.ToolDef]) -> tuple[str | None, list[p.ToolCall]]:
    """(content, calls) from the model's whole answer."""
    names = {t.function.name for t in tools}
    if mode in ("required", "named"):
        try:
            items = json.loads(text)
        except json.JSONDecodeError:   # cut by max_tokens: nothing parseable, keep the text
            return text, []
        return None, [_call(i["name"], i["arguments"]) for i in items
                      if isinstance(i, dict) and i.get("name") in names]
    calls, kept, last = [], [], 0
    for m in _TOOL_CALL_BLOCK.finditer(text):
        try:
            obj = json.loads(m.group(1))
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict) or obj.get("name") not in names:
            continue
        kept.append(text[last:m.start()])
        last = m.end()
        calls.append(_call(obj["name"], obj.get("arguments", {})))
    kept.append(text[last:])
    content = "".join(kept).strip() if calls else text
    return (content or None), calls
