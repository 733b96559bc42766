"""A warm pool of sandbox workers: each code block runs in a child forked from a pre-imported interpreter.

What this covers
    * :class:`PoolSandbox` starts ``config.workers`` template processes once per run
      (:class:`~aimo_kernel.sandbox.process.WorkerProcess` running :mod:`aimo_kernel.sandbox.worker`),
      each importing ``config.preload`` (math, numpy, sympy) once. Per block a template forks a fresh
      process in new PID/mount/IPC namespaces with private tmpfs and a memory cgroup (see the worker),
      prepared before the request arrives, so a block starts with the imports done and nothing of it
      outlives it.
    * A stateless block takes any free template. A persistent session
      (:meth:`PoolSandbox.open_session`) lives in one template (the one with the fewest sessions) and
      shares it with other blocks, one block at a time.
    * The caller's backstop: a template that does not answer by timeout + 0.8 s is killed (its sessions
      die with it, by parent-death signal) and restarted; the block's result says it crashed. A
      template that never gets ready is restarted and that block runs on a fresh worker, with the same
      isolation. ``close()`` is safe at any moment: running and waiting blocks get a result, no template
      starts again.
    * ``run(code, history=[...])`` replays earlier blocks first (a throwaway persistent session).

What this does not cover
    A zygote sharing the imported pages between templates; ``atexit`` handlers registered by the code
    (blocks leave with ``os._exit``). Linux only.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence

from aimo_kernel.config import SandboxConfig
from aimo_kernel.sandbox.process import (
    FRESH_START_S,
    START_TIMEOUT_S,
    Session,
    WorkerProcess,
    check_codes,
    remove_later,
    run_once,
    timeout_for,
)
from aimo_kernel.sandbox.result import ExecutionResult, precheck, with_seconds

__all__ = ["PoolSandbox"]

log = logging.getLogger(__name__)

_CLOSED = ExecutionResult(crashed=True, error="sandbox: closed before the code could run")


def _shutdown(templates: list[WorkerProcess], home: str) -> None:
    for template in templates:
        template.closed = True
        template.kill()
    remove_later(home)


class PoolSandbox:
    """Runs code blocks in children forked from warm templates (see the module docstring)."""

    def __init__(self, config: SandboxConfig) -> None:
        if not isinstance(config, SandboxConfig):
            raise TypeError(f"config must be a SandboxConfig, got {type(config).__name__}")
        self.config = config
        self.python = config.python or sys.executable or "python3"
        self.startup_seconds: float | None = None  # set once every template has been ready once
        self._home = tempfile.mkdtemp(prefix="aimo-pool-")
        self._created = time.monotonic()
        self._templates = [WorkerProcess(config, self._home, config.preload) for _ in range(config.workers)]
        self._free: queue.Queue[WorkerProcess] = queue.Queue()
        for template in self._templates:
            self._free.put(template)
        self._sessions = {id(t): 0 for t in self._templates}
        self._ready_ids: set[int] = set()
        self._lock = threading.Lock()
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415 - only the pool needs one here

        self._executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="aimo-pool")
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown, self._templates, self._home)

    # -- public

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> float | None:
        """Block until every template has imported its modules; returns :attr:`startup_seconds`."""
        deadline = time.monotonic() + timeout_s
        for template in self._templates:
            with template.lock:
                if template.wait_ready(deadline):
                    self._note_ready(template)
        return self.startup_seconds

    def template_pids(self) -> list[int]:
        """Pids of the running templates (for tests and diagnostics)."""
        return [pid for pid in (t.pid() for t in self._templates) if pid is not None]

    def isolation(self) -> dict[str, object]:
        """What the first ready template could set up (empty before any is ready)."""
        return next((dict(t.features) for t in self._templates if t.features), {})

    def run(self, code: str, *, timeout_s: float | None = None, history: Sequence[str] = ()) -> ExecutionResult:
        """Run one block (after replaying ``history``, output discarded). Never raises for bad code.

        ``timeout_s`` can only lower ``config.timeout_s``; replaying ``history`` has a bound of its own
        (``config.timeout_s``) and a failure there is told in the result's ``notice``.
        """
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, got {type(code).__name__}")
        if isinstance(history, str) or not all(isinstance(h, str) for h in history):
            raise TypeError("history must be a sequence of str")
        limit = self._timeout(timeout_s)
        if history:
            return self._run_with_history(code, list(history), limit)
        start = time.monotonic()
        early = precheck(self.config, code, limit)
        if early is not None:
            return with_seconds(early, time.monotonic() - start)
        template = self._take()
        if template is None:
            return _CLOSED
        try:
            with template.lock:
                result = self._run_on(template, code, limit)
        finally:
            self._free.put(template)
        return with_seconds(result, time.monotonic() - start)

    async def arun(self, code: str, *, timeout_s: float | None = None,
                   history: Sequence[str] = ()) -> ExecutionResult:
        """:meth:`run` for an event loop: runs in the pool's threads, the loop keeps going meanwhile."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor,
                                          lambda: self.run(code, timeout_s=timeout_s, history=history))

    def run_many(self, codes: Sequence[str], *, timeout_s: float | None = None) -> list[ExecutionResult]:
        """Run blocks concurrently, at most ``config.workers`` at a time; results in input order."""
        codes = check_codes(codes)
        self._timeout(timeout_s)
        if len(codes) <= 1:
            return [self.run(code, timeout_s=timeout_s) for code in codes]
        return list(self._executor.map(lambda c: self.run(c, timeout_s=timeout_s), codes))

    def open_session(self) -> Session:
        """A persistent session for one candidate (see :class:`~aimo_kernel.sandbox.process.Session`)."""
        self._timeout(None)
        return Session(self.config, self._pick_for_session, self._executor, self._session_closed)

    def close(self) -> None:
        """Kill the templates (and every block and session with them); later runs raise ``RuntimeError``."""
        self._closed = True
        self._executor.shutdown(wait=False)
        self._finalizer()

    def __enter__(self) -> PoolSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals

    def _timeout(self, timeout_s: float | None) -> float:
        if self._closed:
            raise RuntimeError("the sandbox is closed")
        return timeout_for(self.config, timeout_s)

    def _take(self) -> WorkerProcess | None:
        """A free template, or None once the pool is closed (waiting blocks do not run after close)."""
        while not self._closed:
            try:
                return self._free.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def _run_on(self, template: WorkerProcess, code: str, limit: float) -> ExecutionResult:
        if self._closed:
            return _CLOSED
        if not template.wait_ready(time.monotonic() + START_TIMEOUT_S):
            template.start()  # try a new one next time; this block runs on a fresh worker
            return self._run_fresh(code, limit)
        self._note_ready(template)
        result = run_once(self.config, template, code, limit, time.monotonic())
        if template.proc is None and not self._closed:
            template.start()  # it was killed for missing its deadline; imports again in the background
            log.warning("sandbox pool: a worker died or stalled; restarted it")
        return result

    def _run_fresh(self, code: str, limit: float) -> ExecutionResult:
        proc = WorkerProcess(self.config, self._home, ())
        try:
            if not proc.wait_ready(time.monotonic() + FRESH_START_S):
                return ExecutionResult(crashed=True, error="sandbox: could not start a worker")
            return run_once(self.config, proc, code, limit, time.monotonic())
        finally:
            proc.kill()

    def _run_with_history(self, code: str, history: list[str], limit: float) -> ExecutionResult:
        """Replay ``history`` in a throwaway session (within ``config.timeout_s`` in all), then the block."""
        session = self.open_session()
        try:
            deadline = time.monotonic() + self.config.timeout_s
            for old in history:
                left = deadline - time.monotonic()
                res = session.run(old, timeout_s=left) if left > 0 else None
                if res is None or not res.completed:
                    note = "[re-running an earlier block failed; variables defined from it on are missing]"
                    return with_seconds(session.run(code, timeout_s=limit), 0.0, note)
            return session.run(code, timeout_s=limit)
        finally:
            session.close()

    def _pick_for_session(self) -> WorkerProcess:
        with self._lock:
            template = min(self._templates, key=lambda t: self._sessions[id(t)])
            self._sessions[id(template)] += 1
        return template

    def _session_closed(self, template: WorkerProcess) -> None:
        with self._lock:
            self._sessions[id(template)] = max(0, self._sessions[id(template)] - 1)

    def _note_ready(self, template: WorkerProcess) -> None:
        """Record start-up: the first time every template has been ready, log what it cost once."""
        with self._lock:
            if self.startup_seconds is not None or id(template) in self._ready_ids:
                return
            self._ready_ids.add(id(template))
            if len(self._ready_ids) == len(self._templates):
                ready = max(t.ready_at or time.monotonic() for t in self._templates)
                self.startup_seconds = max(0.0, ready - self._created)
                log.info("sandbox pool: %d workers ready in %.2f s (preloaded %s)", len(self._templates),
                         self.startup_seconds, ", ".join(self.config.preload) or "nothing")
