"""Worker processes (the caller's side of :mod:`aimo_kernel.sandbox.worker`) and the fresh-interpreter sandbox.

What this covers
    * :class:`WorkerProcess`: starts ``python -s worker.py <boot>`` in its own session with a scrubbed
      environment, waits for its ready line (which says what isolation it could set up), sends JSON-line
      requests and reads replies with a deadline, kills it (its sessions die with it: each has a
      parent-death signal).
    * The isolation level (:func:`describe_isolation`), printed once per process, and the check against
      ``SandboxConfig.min_isolation``.
    * :class:`SubprocessSandbox`: a fresh worker (nothing preloaded) per block, or per persistent session.
      It runs the same worker code as the pool, so its blocks get exactly the same isolation.
    * :class:`Session`: a candidate's persistent interpreter (``run``/``arun``/``close``), rebuilt by
      replaying its successful blocks when a timeout or crash ended it, with a notice in the next result.

What this does not cover
    The warm pool (:mod:`aimo_kernel.sandbox.pool`); classification (:mod:`aimo_kernel.sandbox.result`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aimo_kernel.config import SandboxConfig
from aimo_kernel.sandbox import worker
from aimo_kernel.sandbox.result import ExecutionResult, classify, cpu_seconds, precheck, with_seconds

__all__ = ["SPARE_MARK", "UID_BASE", "Session", "SubprocessSandbox", "WorkerProcess", "describe_isolation",
           "check_codes", "isolation_level", "make_request", "run_once", "timeout_for"]

log = logging.getLogger(__name__)

UID_BASE = 1_500_000_000  # private uids of blocks start here
SPARE_MARK = "aimo-spare"  # process name of a session prepared ahead that has no code yet
FSIZE_MIN_BYTES = 16 * 1024 * 1024  # largest file the code may write (stdout included)
MAX_PROCS = 64  # processes and threads a block may have at once (a fork bomb must die fast)
BACKSTOP_S = 0.8  # past the timeout, the caller stops waiting for a worker and kills it
START_TIMEOUT_S = 300.0  # a template importing numpy+sympy on a loaded machine; beyond this it is broken
FRESH_START_S = 20.0  # a fresh interpreter with nothing preloaded
LEVELS = ("minimal", "namespaces", "full")
_printed: set[str] = set()
_sid = itertools.count(1)


def isolation_level(features: dict[str, Any]) -> str:
    """``full``: PID/mount/IPC/network namespaces, private uid, memory cgroup; ``namespaces``: the
    namespaces (memory polled, or no private uid); ``minimal``: none of them (session sweep only)."""
    if not (features.get("pid") and features.get("mount") and features.get("ipc")):
        return "minimal"
    if features.get("uid") and features.get("cgroup") and features.get("net"):
        return "full"
    return "namespaces"


def describe_isolation(features: dict[str, Any]) -> str:
    """One line: the level and what makes it up (or is missing)."""
    parts = [name for name in ("pid", "mount", "ipc", "net") if features.get(name)]
    ns = "+".join(parts) + " namespaces" if parts else "no namespaces"
    uid = "private uid" if features.get("uid") else ("user namespace" if features.get("userns") else "same uid")
    cg = features.get("cgroup")
    mem = f"cgroup {cg[0]} memory" if cg else ("polled memory" if features.get("pid") else "per-process memory")
    fs = "read-only root, private tmpfs" if features.get("readonly") else (
        "private tmpfs" if features.get("mount") else "shared /tmp")
    return f"{isolation_level(features)} ({ns}, {uid}, {mem}, {fs})"


def _announce(features: dict[str, Any]) -> None:
    text = describe_isolation(features)
    if text not in _printed:
        _printed.add(text)
        print(f"sandbox isolation: {text}", file=sys.stderr, flush=True)
        log.info("sandbox isolation: %s", text)


def block_env(work: str) -> dict[str, str]:
    """The environment of a block: built from scratch, nothing of the caller's (secrets included)."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
           "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8", "MPLBACKEND": "Agg"}
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                 "VECLIB_MAXIMUM_THREADS"):
        env[name] = "1"
    return env


def make_request(cfg: SandboxConfig, code: str | None, limit: float, *, once: bool) -> dict[str, Any]:
    """A worker request to open a session (with a first block when ``code`` is given)."""
    out_chars = cfg.max_output_chars + 1  # one more than shown, so truncation is visible
    return {"op": "open", "code": code, "once": once, "timeout": limit, "out_chars": out_chars,
            "env": block_env("/tmp"), "fsize": max(FSIZE_MIN_BYTES, 8 * out_chars),
            "cpu": cpu_seconds(limit), "as_bytes": cfg.memory_mb * 1024 * 1024,
            "mem_bytes": cfg.memory_mb * 1024 * 1024, "tmp_bytes": cfg.tmp_mb * 1024 * 1024,
            "refuse": list(cfg.refuse_patterns), "display": cfg.print_last_expression}


class WorkerProcess:
    """One worker (template) process and its pipes. Used by one thread at a time (``lock``)."""

    def __init__(self, config: SandboxConfig, home: str, preload: Sequence[str]) -> None:
        self.config, self.home = config, home
        self.python = config.python or sys.executable or "python3"
        self.boot = {"preload": list(preload), "uid_base": UID_BASE, "tmp_bytes": config.tmp_mb << 20,
                     "home": home, "nproc": MAX_PROCS,
                     "off": list(config.isolation_off)}
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready, self.started_at, self.generation = False, 0.0, 0
        self.ready_at: float | None = None
        self.features: dict[str, Any] = {}
        self._buf = b""
        self.closed = False
        self.start()

    def start(self) -> None:
        """Start the process; it imports in the background and says when it is ready."""
        self.ready, self._buf, self.started_at = False, b"", time.monotonic()
        self.generation += 1
        if self.closed:  # never start again once the owner closed
            self.proc = None
            return
        argv = [self.python, "-s", "-E", worker.__file__, json.dumps(self.boot)]
        try:
            with open(os.path.join(self.home, "worker.log"), "ab") as log_file:
                self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=log_file, cwd=self.home, env=block_env(self.home),
                                             start_new_session=True, bufsize=0)
        except OSError as exc:
            log.warning("sandbox: could not start %s: %s", self.python, exc)
            self.proc = None

    def wait_ready(self, deadline: float) -> bool:
        """Wait for the ready line; False (and the process killed) if it never comes."""
        if self.ready:
            return True
        if self.proc is None:
            return False
        msg = self.read(deadline)
        if msg is None or not msg.get("ready") or not isinstance(msg.get("features"), dict):
            self.kill()
            return False
        self.ready, self.features = True, msg["features"]
        # when it was ready, on the machine-wide monotonic clock (read late, the line still says when)
        at = msg.get("at")
        self.ready_at = float(at) if isinstance(at, (int, float)) and at <= time.monotonic() else time.monotonic()
        if msg.get("failed"):
            log.warning("sandbox: could not preload %s", msg["failed"])
        _announce(self.features)
        return True

    def request(self, obj: dict[str, Any], deadline: float) -> dict[str, Any] | None:
        """Send a request and read its reply; None (the worker killed) if it dies or misses ``deadline``."""
        if not self.send(obj):
            self.kill()
            return None
        reply = self.read(deadline)
        if reply is None:
            self.kill()
        return reply

    def send(self, obj: dict[str, Any]) -> bool:
        if self.proc is None or self.proc.stdin is None:
            return False
        data = (json.dumps(obj) + "\n").encode("utf-8", errors="replace")
        try:
            while data:
                data = data[os.write(self.proc.stdin.fileno(), data):]
        except (OSError, ValueError):
            return False
        return True

    def read(self, deadline: float) -> dict[str, Any] | None:
        """The next JSON line, or None on EOF, garbage or the deadline."""
        if self.proc is None or self.proc.stdout is None:
            return None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            try:
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    return None
                chunk = os.read(fd, 1 << 20)
            except (OSError, ValueError):
                return None
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except ValueError:
            return None
        return msg if isinstance(msg, dict) else None

    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def kill(self) -> None:
        """Kill the worker (its whole session; the blocks' inits die with it) and reap it."""
        self.ready = False
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2.0)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def check_level(config: SandboxConfig, features: dict[str, Any]) -> ExecutionResult | None:
    """A refusal when this machine gives less isolation than ``config.min_isolation`` asks."""
    have = isolation_level(features)
    if LEVELS.index(have) >= LEVELS.index(config.min_isolation):
        return None
    return ExecutionResult(refused=True, error=f"sandbox: isolation {config.min_isolation!r} is required but this "
                                               f"machine allows only {describe_isolation(features)}")


def remove_later(path: str) -> None:
    """Delete a folder in the background (the caller does not wait for it)."""
    threading.Thread(target=shutil.rmtree, args=(path, True), daemon=True).start()


def run_once(config: SandboxConfig, proc: WorkerProcess, code: str, limit: float, start: float) -> ExecutionResult:
    """One stateless block on a ready worker; a worker that misses its deadline is killed (caller restarts)."""
    refusal = check_level(config, proc.features)
    if refusal is not None:
        return refusal
    req = make_request(config, code, limit, once=True)
    req["sid"] = f"b{next(_sid)}"
    reply = proc.request(req, start + limit + BACKSTOP_S)
    if reply is None:
        return ExecutionResult(crashed=True, error="Crash: the sandbox worker running the code died")
    return classify(config, reply, limit, cpu_seconds(limit))


class Session:
    """A candidate's persistent Python session: its blocks share state, as in a notebook.

    Obtain one from ``sandbox.open_session()``; ``run(code, timeout_s=...)`` / ``await arun(...)``
    run a block, ``close()`` ends it (idempotent, safe at any moment). When a block times out or
    crashes, the process is gone; the next ``run`` rebuilds it by re-running the blocks that completed
    (output discarded, bounded by ``config.timeout_s`` in all) and says so in that result's ``notice``.
    """

    def __init__(self, config: SandboxConfig, acquire: Callable[[], WorkerProcess],
                 executor: ThreadPoolExecutor, on_close: Callable[[WorkerProcess], None] | None = None) -> None:
        self.config, self._acquire, self._executor, self._on_close = config, acquire, executor, on_close
        self._proc: WorkerProcess | None = None
        self._generation, self._sid = -1, ""
        self._done: list[str] = []  # blocks that completed: what a rebuild replays
        self._lost = False  # the process ended (timeout, crash, worker restart) after some blocks
        self._closed = False
        self._lock = threading.Lock()

    def run(self, code: str, *, timeout_s: float | None = None) -> ExecutionResult:
        """Run one block in the session. Never raises for bad code; raises ``RuntimeError`` once closed."""
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, got {type(code).__name__}")
        with self._lock:
            if self._closed:
                raise RuntimeError("the session is closed")
            limit = timeout_for(self.config, timeout_s)
            start = time.monotonic()
            early = precheck(self.config, code, limit)
            if early is not None:
                return with_seconds(early, time.monotonic() - start)
            result = self._run_locked(code, limit)
            return with_seconds(result, time.monotonic() - start)

    async def arun(self, code: str, *, timeout_s: float | None = None) -> ExecutionResult:
        """:meth:`run` for an event loop (in the sandbox's threads)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: self.run(code, timeout_s=timeout_s))

    def close(self) -> None:
        """End the session: its processes are killed, its files and IPC objects gone."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            proc = self._proc
            if proc is not None and proc.generation == self._generation and proc.ready:
                with proc.lock:
                    proc.request({"op": "close", "sid": self._sid}, time.monotonic() + 2.0)
            if proc is not None and self._on_close is not None:
                self._on_close(proc)

    def _run_locked(self, code: str, limit: float) -> ExecutionResult:
        proc = self._proc if self._proc is not None else self._acquire()
        self._proc = proc
        with proc.lock:
            if not proc.ready and not proc.wait_ready(time.monotonic() + START_TIMEOUT_S):
                proc.start()
                return ExecutionResult(crashed=True, error="Crash: the sandbox worker could not start")
            refusal = check_level(self.config, proc.features)
            if refusal is not None:
                return refusal
            notice = ""
            if proc.generation != self._generation:
                notice = self._open(proc)
                if notice.startswith("sandbox:"):
                    return ExecutionResult(crashed=True, error=notice)
            start = time.monotonic()
            req = {"op": "exec", "sid": self._sid, "code": code, "timeout": limit,
                   "out_chars": self.config.max_output_chars + 1, "refuse": list(self.config.refuse_patterns),
                   "display": self.config.print_last_expression}
            reply = proc.request(req, start + limit + BACKSTOP_S)
            if reply is None:
                proc.start()
                reply = {"state": "error", "error": "Crash: the sandbox worker running the code died"}
            result = classify(self.config, reply, limit, cpu_seconds(limit))
            if reply.get("state") != "done":
                self._generation, self._lost = -1, True  # the process is gone: rebuild next time
            elif result.completed:
                self._done.append(code)
            return with_seconds(result, 0.0, notice)

    def _open(self, proc: WorkerProcess) -> str:
        """Start the session's process (and rebuild its state); a notice for the model, or an error."""
        self._sid = f"s{next(_sid)}"
        req = make_request(self.config, None, self.config.timeout_s, once=False)
        req["sid"] = self._sid
        reply = proc.request(req, time.monotonic() + 5.0)
        if reply is None or reply.get("state") != "open":
            if reply is None:
                proc.start()
            return "sandbox: could not open a session" + (f": {reply.get('error')}" if reply else "")
        self._generation = proc.generation
        if not self._lost:
            return ""
        self._lost = False
        return self._replay(proc)

    def _replay(self, proc: WorkerProcess) -> str:
        """Re-run the completed blocks quietly, within ``config.timeout_s`` in all; the notice to show."""
        deadline = time.monotonic() + self.config.timeout_s
        for i, old in enumerate(self._done):
            left = deadline - time.monotonic()
            req = {"op": "exec", "sid": self._sid, "code": old, "timeout": max(0.05, left), "out_chars": 1,
                   "refuse": [], "display": False}
            reply = proc.request(req, time.monotonic() + max(0.05, left) + BACKSTOP_S) if left > 0 else None
            status = reply.get("status") if reply else None
            ok = bool(reply and reply.get("state") == "done" and isinstance(status, dict)
                      and status.get("kind") == "ok")
            if not ok:
                if reply is None and proc.proc is None:
                    proc.start()
                self._generation = proc.generation if reply and reply.get("state") == "done" else -1
                self._done = self._done[:i]
                return (f"[the Python session was restarted; re-running earlier block {i + 1} failed, so "
                        "variables defined from that block on are gone]")
        return "[the Python session was restarted; earlier blocks were re-run to restore their variables]"


def timeout_for(config: SandboxConfig, timeout_s: float | None) -> float:
    if timeout_s is None:
        return float(config.timeout_s)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or math.isnan(timeout_s):
        raise TypeError(f"timeout_s must be a number or None, got {timeout_s!r}")
    return min(float(config.timeout_s), float(timeout_s))


class SubprocessSandbox:
    """Runs each block in a fresh worker interpreter (nothing preloaded), with the pool's isolation."""

    def __init__(self, config: SandboxConfig) -> None:
        if not isinstance(config, SandboxConfig):
            raise TypeError(f"config must be a SandboxConfig, got {type(config).__name__}")
        self.config = config
        self.python = config.python or sys.executable or "python3"
        self._home = tempfile.mkdtemp(prefix="aimo-sandbox-")
        self._executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="aimo-sandbox")
        self._closed = False
        self._live: set[WorkerProcess] = set()
        self._live_lock = threading.Lock()

    def run(self, code: str, *, timeout_s: float | None = None) -> ExecutionResult:
        """Run one block. ``timeout_s`` can only lower ``config.timeout_s``. Never raises for bad code."""
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, got {type(code).__name__}")
        limit = self._timeout(timeout_s)
        start = time.monotonic()
        early = precheck(self.config, code, limit)
        if early is not None:
            return with_seconds(early, time.monotonic() - start)
        proc = self._new_worker()
        try:
            if not proc.wait_ready(time.monotonic() + FRESH_START_S):
                return with_seconds(ExecutionResult(crashed=True, error="sandbox: could not start a worker"),
                                    time.monotonic() - start)
            result = run_once(self.config, proc, code, limit, time.monotonic())
        finally:
            self._drop_worker(proc)
        return with_seconds(result, time.monotonic() - start)

    async def arun(self, code: str, *, timeout_s: float | None = None) -> ExecutionResult:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: self.run(code, timeout_s=timeout_s))

    def run_many(self, codes: Sequence[str], *, timeout_s: float | None = None) -> list[ExecutionResult]:
        """Run blocks concurrently, at most ``config.workers`` at a time; results in input order."""
        codes = check_codes(codes)
        self._timeout(timeout_s)
        return list(self._executor.map(lambda c: self.run(c, timeout_s=timeout_s), codes))

    def open_session(self) -> Session:
        """A persistent session on a worker of its own (killed when the session closes)."""
        self._timeout(None)
        return Session(self.config, self._new_worker, self._executor, self._drop_worker)

    def close(self) -> None:
        """Kill every worker still running; later runs raise ``RuntimeError``."""
        self._closed = True
        with self._live_lock:
            live, self._live = list(self._live), set()
        for proc in live:
            proc.kill()
        self._executor.shutdown(wait=False)
        remove_later(self._home)

    def __enter__(self) -> SubprocessSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _new_worker(self) -> WorkerProcess:
        proc = WorkerProcess(self.config, self._home, ())
        with self._live_lock:
            if self._closed:
                proc.kill()
            self._live.add(proc)
        return proc

    def _drop_worker(self, proc: WorkerProcess) -> None:
        proc.kill()
        with self._live_lock:
            self._live.discard(proc)

    def _timeout(self, timeout_s: float | None) -> float:
        if self._closed:
            raise RuntimeError("the sandbox is closed")
        return timeout_for(self.config, timeout_s)


def check_codes(codes: Sequence[str]) -> list[str]:
    if isinstance(codes, str):
        raise TypeError("codes must be a sequence of str, not a str")
    out = list(codes)
    for code in out:
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, got {type(code).__name__}")
    return out

