"""What running a code block gave (:class:`ExecutionResult`), how it is shown to the model, and how a
worker's reply is turned into one (:func:`classify`).

What this covers
    * The result's flags and the text for the ```` ```output ```` block (:meth:`ExecutionResult.render`):
      stdout when the code completed, else the error's last line; cut to the first and last halves when
      too long, as ToRA's executor did (the final answer is usually printed last, so keeping only the
      head would hide it).
    * :func:`precheck` (what the caller decides without parsing: length, time left) and
      :func:`classify` (flags from the worker's reply: timeout, memory, crash, exit, refusal).
    * :func:`prepare_code` (the auto-print rewrite, also applied inside the worker) for callers that
      want to see what will run.

What this does not cover
    Running anything: see :mod:`aimo_kernel.sandbox.process` and :mod:`aimo_kernel.sandbox.pool`.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import os
import signal
from dataclasses import dataclass
from typing import Any, TypedDict

from aimo_kernel.config import SandboxConfig
from aimo_kernel.sandbox import worker

__all__ = ["TRUNCATION_MARKER", "ExecutionResult", "classify", "precheck", "prepare_code", "with_seconds"]

TRUNCATION_MARKER = "\n... [truncated]"
MIDDLE_MARKER = "\n... [output truncated] ...\n"
MAX_ERROR_LINES = 40
_MEMORY_HINTS = ("MemoryError", "Cannot allocate memory", "bad_alloc", "out of memory", "Out of memory",
                 "failed to allocate", "Unable to allocate")


@dataclass(frozen=True, kw_only=True)
class ExecutionResult:
    """What running one code block gave. Always data: failures are flags and an ``error`` text.

    ``exit_code`` is the block's exit status (negative: killed by that signal), or ``None`` when it did
    not finish by itself (timed out) or never ran (refused, could not start). ``error`` is empty when
    the code ran without an error. ``stdout`` is the head of the output; when the middle was dropped,
    ``stdout_tail`` holds its last characters. ``notice`` says what the sandbox did to the session
    (e.g. rebuilt it after a timeout); it is shown before the output.
    """

    stdout: str = ""
    error: str = ""
    exit_code: int | None = None
    timed_out: bool = False
    memory_exceeded: bool = False
    output_truncated: bool = False
    crashed: bool = False
    refused: bool = False
    seconds: float = 0.0
    stdout_tail: str = ""
    notice: str = ""

    @property
    def ok(self) -> bool:
        """Ran to completion with exit status 0 and no flag raised."""
        return self.completed and not self.output_truncated

    @property
    def completed(self) -> bool:
        """Ran to completion without error; only the output may have been truncated."""
        return (self.exit_code == 0 and not self.error and not self.timed_out and not self.memory_exceeded
                and not self.crashed and not self.refused)

    def render(self, max_chars: int) -> str:
        """The text for the ```output block, at most about ``max_chars`` characters.

        Stdout when the code completed (also when only the output was truncated), otherwise the error's
        last line. Too long: the first and last ``max_chars // 2`` characters with a marker between.
        """
        if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
            raise ValueError(f"max_chars must be a positive integer, got {max_chars!r}")
        if self.completed:
            text = self.stdout.rstrip()
            if self.output_truncated:
                text = (self.stdout + MIDDLE_MARKER + self.stdout_tail).rstrip() if self.stdout_tail else (
                    text + TRUNCATION_MARKER)
        else:
            text = error_summary(self.error).rstrip()
        if self.notice:
            text = f"{self.notice}\n{text}" if text else self.notice
        if len(text) > max_chars:
            half = max(1, max_chars // 2)
            text = text[:half].rstrip() + MIDDLE_MARKER + text[-half:].lstrip()
        return text


def error_summary(error: str) -> str:
    """The error's last line, the way ToRA's and Numina's executors showed errors to the model.

    ToRA kept ``traceback.format_exc().split("\\n")[-2]``: one line for every error, syntax errors
    included, so a ``SyntaxError`` is shown as its last line, not the four-line caret block.
    """
    lines = [line for line in error.rstrip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "Error: the code failed"


def prepare_code(code: str, *, print_last_expression: bool) -> str:
    """The code as it runs: the last bare expression shown unless it is ``None`` (see the worker).

    Code that does not parse is returned unchanged (running it then reports the ``SyntaxError``).
    """
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, got {type(code).__name__}")
    if not print_last_expression:
        return code
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return code
    return worker.add_display(code.replace("\r\n", "\n").replace("\r", "\n"), tree)


def precheck(config: SandboxConfig, code: str, limit: float) -> ExecutionResult | None:
    """The result for code that must not run (too long, no time left); ``None`` if it may run.

    Refusal by pattern is decided inside the worker, on the parsed code, under the block's limits.
    """
    if len(code) > config.max_code_chars:
        return ExecutionResult(error=f"refused: code is longer than {config.max_code_chars} characters",
                               refused=True)
    if limit <= 0:
        return ExecutionResult(error="TimeoutError: no time left to run the code", timed_out=True)
    return None


def with_seconds(result: ExecutionResult, seconds: float, notice: str | None = None) -> ExecutionResult:
    """``result`` with its duration (and a notice) set."""
    return dataclasses.replace(result, seconds=seconds, notice=result.notice if notice is None else notice)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def tail_lines(text: str, n: int) -> str:
    lines = text.rstrip().splitlines()
    if len(lines) <= n:
        return "\n".join(lines)
    head = [lines[0]] if lines[0].startswith("Traceback") else []
    return "\n".join([*head, "  ...", *lines[-n:]])


class _Output(TypedDict):
    stdout: str
    stdout_tail: str
    output_truncated: bool


def _stdout(cfg: SandboxConfig, reply: dict[str, Any], status: dict[str, Any]) -> tuple[str, str, bool]:
    """(head, tail, truncated) of the block's stdout."""
    raw = str(reply.get("stdout", ""))
    size = reply.get("stdout_bytes")
    head = raw[: cfg.max_output_chars]
    truncated = len(raw) > cfg.max_output_chars or bool(status.get("dropped")) or (
        isinstance(size, int) and size > len(raw.encode("utf-8", errors="replace")))
    tail = str(status.get("tail", ""))[-cfg.max_output_chars:] if truncated else ""
    return head, tail, truncated


def classify(cfg: SandboxConfig, reply: dict[str, Any], limit: float, cpu_limit: int) -> ExecutionResult:
    """Turn a worker's reply (what the block wrote, how it ended) into an :class:`ExecutionResult`."""
    status = reply.get("status") if isinstance(reply.get("status"), dict) else {}
    assert isinstance(status, dict)
    report = reply.get("report") if isinstance(reply.get("report"), dict) else {}
    assert isinstance(report, dict)
    stdout, tail, truncated = _stdout(cfg, reply, status)
    base: _Output = {"stdout": stdout, "stdout_tail": tail, "output_truncated": truncated}
    if reply.get("state") == "error" or "error" in report:
        return ExecutionResult(**base, crashed=True, error=str(reply.get("error") or report.get("error")))
    oom = (report.get("oom_kills") or 0) > 0 or bool(report.get("over"))
    if reply.get("state") == "timeout":
        return ExecutionResult(**base, timed_out=True, memory_exceeded=oom,
                               error=f"TimeoutError: code ran longer than {limit:g} s")
    if oom:
        return ExecutionResult(**base, memory_exceeded=True, exit_code=_rc(report),
                               error=f"MemoryError: code used more than {cfg.memory_mb} MB")
    rc = _rc(report) if reply.get("state") == "exited" else 0
    stderr = str(reply.get("stderr", ""))
    if rc is not None and rc < 0:
        return _killed(cfg, base, rc, stderr, report, cpu_limit)
    return _by_status(cfg, base, status, rc, stderr)


def _rc(report: dict[str, Any]) -> int | None:
    wstatus = report.get("wstatus")
    return os.waitstatus_to_exitcode(wstatus) if isinstance(wstatus, int) else None


def _killed(cfg: SandboxConfig, base: _Output, rc: int, stderr: str, report: dict[str, Any],
            cpu_limit: int) -> ExecutionResult:
    """The block's main process died of a signal: CPU limit, memory, or a crash."""
    signum = -rc
    cpu_s = report.get("cpu_s") if isinstance(report.get("cpu_s"), (int, float)) else 0.0
    assert isinstance(cpu_s, (int, float))
    if signum == signal.SIGXCPU and cpu_s >= cpu_limit - 0.05:  # a self-sent SIGXCPU is a crash
        return ExecutionResult(**base, timed_out=True, exit_code=rc,
                               error=f"TimeoutError: code used more than {cpu_limit} s of CPU time")
    maxrss = report.get("maxrss_kb")
    if any(hint in stderr for hint in _MEMORY_HINTS) or (
            signum == signal.SIGKILL and isinstance(maxrss, int) and maxrss * 2 >= cfg.memory_mb * 1024):
        return ExecutionResult(**base, memory_exceeded=True, exit_code=rc,
                               error=f"MemoryError: code used more than {cfg.memory_mb} MB "
                                     f"(killed by {signal_name(signum)})")
    tail = tail_lines(stderr, 10)
    reason = f"Crash: the code was killed by {signal_name(signum)}"
    return ExecutionResult(**base, crashed=True, exit_code=rc, error=f"{tail}\n{reason}" if tail else reason)


def _by_status(cfg: SandboxConfig, base: _Output, status: dict[str, Any], rc: int | None,
               stderr: str) -> ExecutionResult:
    """The block ended by itself: its status record says how."""
    kind = status.get("kind")
    if not status:
        return ExecutionResult(**base, crashed=True, error="sandbox: the block's process ended before the code ran")
    if kind == "setup":
        return ExecutionResult(**base, crashed=True, error=str(status.get("error", "sandbox: setup failed")))
    if kind == "refused":
        return ExecutionResult(**base, refused=True, error=str(status.get("error", "refused")))
    if kind == "exception":
        error = tail_lines(str(status.get("error", "")), MAX_ERROR_LINES) or "Error: the code failed"
        memory = bool(status.get("memory")) or error.rstrip().splitlines()[-1:] == ["MemoryError"]
        return ExecutionResult(**base, error=error, memory_exceeded=memory, exit_code=rc if rc else 1)
    if kind == "exit":
        code = status.get("code")
        if code in (None, 0) and not rc:
            return ExecutionResult(**base, exit_code=0)
        return ExecutionResult(**base, error=f"SystemExit: {code}", exit_code=rc if rc else 1)
    if rc == 0:  # ran to its end (os._exit(0), a closed or garbled report included)
        return ExecutionResult(**base, exit_code=0)
    tail = tail_lines(stderr, 10)
    reason = f"Crash: the code ended without a report (exit status {rc})"
    memory = any(hint in stderr for hint in _MEMORY_HINTS)
    return ExecutionResult(**base, crashed=not memory, memory_exceeded=memory, exit_code=rc,
                           error=f"{tail}\n{reason}" if tail else reason)


def cpu_seconds(limit: float) -> int:
    """The CPU-time limit of a block with wall-clock limit ``limit``."""
    return int(math.ceil(limit)) + 1
