"""The sandbox that runs model-written code blocks: protocol, factory and public names.

What this covers
    * :class:`Sandbox`: what solvers need (``run``, ``arun``, ``run_many``, ``open_session``, ``close``).
    * :func:`make_sandbox`: the warm pool (default) or a fresh interpreter per block; both run the same
      worker code (:mod:`aimo_kernel.sandbox.worker`) and so give the same isolation, printed once.
    * :class:`Session`: a candidate's persistent interpreter (``sandbox.session = "persistent"``).

What this does not cover
    Choosing stateless or persistent per dialect (the solver reads ``config.session``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from aimo_kernel.config import SandboxConfig
from aimo_kernel.sandbox.pool import PoolSandbox
from aimo_kernel.sandbox.process import Session, SubprocessSandbox, describe_isolation, isolation_level
from aimo_kernel.sandbox.result import TRUNCATION_MARKER, ExecutionResult, prepare_code

__all__ = ["TRUNCATION_MARKER", "ExecutionResult", "PoolSandbox", "Sandbox", "Session", "SubprocessSandbox",
           "describe_isolation", "isolation_level", "make_sandbox", "prepare_code"]


class Sandbox(Protocol):
    """What the solvers need from a sandbox."""

    config: SandboxConfig

    def run(self, code: str, *, timeout_s: float | None = None) -> ExecutionResult: ...

    async def arun(self, code: str, *, timeout_s: float | None = None) -> ExecutionResult: ...

    def run_many(self, codes: Sequence[str], *, timeout_s: float | None = None) -> list[ExecutionResult]: ...

    def open_session(self) -> Session: ...

    def close(self) -> None: ...


def make_sandbox(config: SandboxConfig) -> SubprocessSandbox | PoolSandbox:
    """The sandbox ``config.kind`` names: the warm pool (default) or a fresh interpreter per block."""
    if not isinstance(config, SandboxConfig):
        raise TypeError(f"config must be a SandboxConfig, got {type(config).__name__}")
    if config.kind == "subprocess":
        return SubprocessSandbox(config)
    return PoolSandbox(config)
