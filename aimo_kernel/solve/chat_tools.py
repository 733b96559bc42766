"""The chat-tools dialect: a model's own chat template with a ``python`` tool, Qwen3/Hermes-style tool calls.

The model calls the tool with ``<tool_call>{"name": "python", "arguments": {"code": "..."}}</tool_call>``
(Qwen2.5/Qwen3, Hermes; ``arguments`` may also be a JSON-encoded string), or in the Qwen3-Coder XML form
``<tool_call><function=python><parameter=code>...</parameter></function></tool_call>``. Generation stops at
``</tool_call>`` (kept); the output goes back as a ChatML tool turn (``<|im_start|>user<tool_response>``, what
Qwen's templates render for a ``tool`` message) and the assistant turn reopens; the answer is the last
``\\boxed{}`` outside tool responses. The tool is declared in the user turn (the model's template applied through
:meth:`PromptFormat.chat_prompt`, which takes one message), in the words Qwen's templates use for ``tools=``.

We parse the calls ourselves rather than rely on a server's ``--tool-call-parser``: the in-process engines and the
Completions endpoint have no server-side parser, a parser only answers after the whole turn (we stop the stream at
``</tool_call>`` and run the code at once), and the raw text is what continues the trace (prefix cache).
Covers text conventions only.
"""

from __future__ import annotations

import json
import re

from aimo_kernel.core.answers import AnswerRule, extract_answer
from aimo_kernel.engine.base import PromptFormat
from aimo_kernel.sandbox import ExecutionResult

OPEN, CLOSE = "<tool_call>", "</tool_call>"
TOOL = {"type": "function", "function": {
    "name": "python",
    "description": "Run Python code in a stateful interpreter (variables persist between calls) and return "
                   "what it prints; the value of a last bare expression is shown too.",
    "parameters": {"type": "object", "properties": {"code": {"type": "string", "description": "Python code"}},
                   "required": ["code"]}}}
TOOLS_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    + json.dumps(TOOL) + "\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call>\n\n")
TASK = ("Use the python tool to compute and check your reasoning. The answer is an integer between 0 and "
        "99999: put it in \\boxed{}.\n\n")
# ChatML, as Qwen's templates render a tool message after an assistant turn with tool calls
TOOL_TURN = ("<|im_end|>\n<|im_start|>user\n<tool_response>\n", "\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
_XML_CODE = re.compile(r"<function=(\w[\w.-]*)>\s*<parameter=(\w+)>\n?(.*?)\n?</parameter>", re.S)
_RESPONSES = re.compile(r"<tool_response>.*?</tool_response>", re.S)


def _json_call(body: str) -> str | None:
    """The code of a JSON tool call to ``python``, or None (not JSON, another tool, no code)."""
    try:
        call = json.loads(body)
        args = call.get("arguments", call.get("parameters", {})) if isinstance(call, dict) else None
        if isinstance(args, str):  # some models JSON-encode the arguments object
            args = json.loads(args)
    except (ValueError, TypeError):
        return None
    if not isinstance(call, dict) or call.get("name") != "python" or not isinstance(args, dict):
        return None
    code = args.get("code")
    return code if isinstance(code, str) and code.strip() else None


def tool_call_code(call: str) -> str | None:
    """The code inside one ``<tool_call>`` body (JSON or Qwen3-Coder XML), or None."""
    body = call.strip()
    if body.startswith("{"):
        return _json_call(body)
    found = _XML_CODE.search(body)
    if found and found.group(1) == "python" and found.group(2) == "code" and found.group(3).strip():
        return found.group(3)
    return None


class ChatToolsDialect:
    """Qwen3/Hermes tool calls in the model's own chat template (ChatML tool turns)."""

    name: str = "chat-tools"
    stop: tuple[str, ...] = (CLOSE,)
    persistent: bool = True  # the tool is declared stateful: its variables persist between calls
    special_tokens: bool = False  # <tool_call> is an ordinary added token, kept by default

    def prompt(self, model: PromptFormat, problem: str) -> str:
        return model.chat_prompt(TOOLS_PREAMBLE + TASK + problem)

    def code(self, text: str) -> str | None:
        if not text.endswith(CLOSE):
            return None
        start = text.rfind(OPEN)
        if start < 0:
            return None
        return tool_call_code(text[start + len(OPEN):-len(CLOSE)])

    def wrote_code(self, text: str) -> bool:
        return OPEN in text

    def eos_call(self, text: str) -> tuple[str, str] | None:
        return None  # </tool_call> is text, never an EOS token: a turn that ended is an answer

    def feedback(self, result: ExecutionResult, max_chars: int) -> str:
        # printed template markers would end the tool turn early once the trace is tokenized again
        output = result.render(max_chars).replace("<|", "< |").replace("</tool_response>", "< /tool_response>")
        return TOOL_TURN[0] + output + TOOL_TURN[1]

    def answer(self, text: str, rule: AnswerRule) -> int | None:
        # a \boxed{} the code printed is not the model's answer
        return extract_answer(_RESPONSES.sub("", text), rule)
