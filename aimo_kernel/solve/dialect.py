"""The dialect seam: how a model writes code and reads its output, as one explicit interface.

A :class:`Dialect` says how a problem becomes the prompt, where generation stops so code can run,
how the code is found in the text, how its output is fed back, and where the final answer is. The
solver core (:mod:`aimo_kernel.solve.pipeline`) only goes through it. The first implementation is
:class:`NuminaDialect`, the Numina/ToRA markdown blocks: the model writes a ```python block and then
"```output\\n" (the stop string, kept); the block's output follows as an ```output block and the model
continues; the answer is the last ``\\boxed{}``. Covers text conventions only: running code is the
sandbox's, and a candidate's persistent session (when the sandbox offers one) is held by the
candidate (:attr:`aimo_kernel.solve.candidate.Candidate.session`), not by the dialect; a dialect only
says whether its model expects one (``persistent``).

The dialects, by the name ``tir.dialect`` gives (:func:`get_dialect`): ``numina`` (here), ``harmony``
(gpt-oss, :mod:`aimo_kernel.solve.harmony`) and ``chat-tools`` (Qwen3/Hermes tool calls in the model's
chat template, :mod:`aimo_kernel.solve.chat_tools`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from aimo_kernel.core.answers import AnswerRule, extract_answer
from aimo_kernel.engine.base import PromptFormat
from aimo_kernel.sandbox import ExecutionResult


class Dialect(Protocol):
    """How one family of models writes tool-integrated reasoning."""

    name: str
    stop: tuple[str, ...]  # generation stops at these (kept in the text) when the model wants code run
    persistent: bool  # whether the model expects its code blocks to share one interpreter (a session)
    special_tokens: bool  # whether the dialect's structure is special tokens the engine must keep in the text

    def prompt(self, model: PromptFormat, problem: str) -> str:
        """The prompt of a problem, ready for generation."""
        ...

    def code(self, text: str) -> str | None:
        """The code a generation that ended on a stop string asks to run (None: it wrote none)."""
        ...

    def wrote_code(self, text: str) -> bool:
        """Whether a candidate's trace contains code at all (the no-code rules look at this)."""
        ...

    def eos_call(self, text: str) -> tuple[str, str] | None:
        """For a generation that ended on the model's EOS: (what closes the call in the trace, its code) when
        the model's tool-call token is one of its EOS tokens (gpt-oss's ``<|call|>``); else None."""
        ...

    def feedback(self, result: ExecutionResult, max_chars: int) -> str:
        """The text appended to the trace after its code ran, before the model continues."""
        ...

    def answer(self, text: str, rule: AnswerRule) -> int | None:
        """The final answer of a finished trace, or None."""
        ...


STOP = "```output\n"
_CODE_OPEN = "```python"


def last_code_block(text: str) -> str | None:
    """The last ```python block of ``text`` (closed by ``` or cut by the stop string), or None."""
    start = text.rfind(_CODE_OPEN)
    if start < 0:
        return None
    body = text[start + len(_CODE_OPEN):]
    code = body.split("```", 1)[0]
    return code.strip("\n") or None


class NuminaDialect:
    """Numina/ToRA markdown blocks: ```python ... ``` then ```output ... ```, answer in ``\\boxed{}``."""

    name: str = "numina"
    stop: tuple[str, ...] = (STOP,)
    persistent: bool = False  # Numina/ToRA ran every block in a fresh python3
    special_tokens: bool = False  # plain markdown

    def prompt(self, model: PromptFormat, problem: str) -> str:
        return model.chat_prompt(problem)

    def code(self, text: str) -> str | None:
        return last_code_block(text)

    def wrote_code(self, text: str) -> bool:
        return _CODE_OPEN in text

    def eos_call(self, text: str) -> tuple[str, str] | None:
        return None  # its calls end on the stop string only

    def feedback(self, result: ExecutionResult, max_chars: int) -> str:
        # the stop string already opened the output block; close it so the model writes on
        return result.render(max_chars) + "\n```\n"

    def answer(self, text: str, rule: AnswerRule) -> int | None:
        return extract_answer(text, rule)


def _harmony() -> Dialect:
    from aimo_kernel.solve.harmony import HarmonyDialect, encoding

    encoding()  # a missing library or vocabulary is told now, not at the first problem
    return HarmonyDialect()


def _chat_tools() -> Dialect:
    from aimo_kernel.solve.chat_tools import ChatToolsDialect

    return ChatToolsDialect()


# the names are the config's (tir.dialect is validated against them); each factory imports its module when chosen
DIALECTS: dict[str, Callable[[], Dialect]] = {"numina": NuminaDialect, "harmony": _harmony, "chat-tools": _chat_tools}


def get_dialect(name: str = "numina") -> Dialect:
    """A fresh dialect by name; ``ValueError`` for an unknown one, ``HarmonyUnavailable`` without its library."""
    try:
        factory = DIALECTS[name]
    except KeyError:
        raise ValueError(f"unknown dialect {name!r}; known: {', '.join(DIALECTS)}") from None
    return factory()
