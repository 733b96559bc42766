"""Run model-written Python code blocks in a fresh interpreter, with limits, and clean what comes back.

What this covers
    * One fresh ``python`` process per code block (:class:`SubprocessSandbox`), in its own session and
      process group, in a private temporary folder that is deleted afterwards. The environment is built
      from scratch (``PATH``, ``HOME``/``TMPDIR`` pointing into the temporary folder, a UTF-8 locale,
      ``PYTHONHASHSEED=0``, one BLAS/OpenMP thread), so nothing of the parent's environment (secrets
      included) reaches the code. ``stdin`` is ``/dev/null``.
    * Limits, set by a small bootstrap prelude that runs inside the child before the code: address space
      (``memory_mb``), CPU time (timeout + 1 s), file size, no core files, and a cap on processes.
      ``RLIMIT_NPROC`` is ignored by the kernel for root, so when the child runs as root the prelude moves
      it to a private real uid (a fixed base plus its pid; the effective uid stays 0 so it can still read
      the interpreter's files) and drops ``CAP_SYS_ADMIN``/``CAP_SYS_RESOURCE``, which makes the process
      cap effective against fork bombs. Every step is best-effort: where one is not possible the run goes on.
    * Wall-clock timeout measured by the parent (no ``signal.alarm``, so callers may use threads). On
      timeout, and after every normal exit too, the whole process group is killed with ``SIGKILL`` and
      ``/proc`` is swept for anything left in the child's session (or with its private uid), all before
      the child is reaped, so its pid cannot be reused by an unrelated process meanwhile.
    * Output: the child's stdout goes to a file; inside the child ``sys.stdout`` is capped at
      ``max_output_chars`` (a 200 MB print costs no memory in the parent) and the file-size limit is the
      backstop for raw writes. The parent reads only the first bytes, decoded as UTF-8 with replacement.
    * Errors: the prelude compiles the code with the file name ``<code>`` and writes a status file with the
      traceback minus its own frames; temporary-folder paths are removed, so errors read like
      ``File "<code>", line 3``. :meth:`ExecutionResult.render` gives the text shown to the model, following
      the Numina convention (stdout, or the error's last line(s)).
    * Code containing one of ``refuse_patterns`` (e.g. ``subprocess``) is refused without running.

What this does not cover (a later issue)
    A warm pool of hardened workers, per-candidate interpreter state carried between code blocks, and a
    real security boundary: the code still runs with the effective uid of the caller. The limits here stop
    accidents (runaway loops, memory bombs, huge prints, fork bombs, stray background processes), not an
    adversary. Linux is assumed; elsewhere the ``/proc`` sweep and the process cap quietly do nothing.
"""

from __future__ import annotations

import ast
import contextlib
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aimo_kernel.config import SandboxConfig

if TYPE_CHECKING:
    from aimo_kernel.sandbox_pool import PoolSandbox

__all__ = ["TRUNCATION_MARKER", "ExecutionResult", "SubprocessSandbox", "make_sandbox", "prepare_code"]

TRUNCATION_MARKER = "\n... [truncated]"

_FSIZE_MIN_BYTES = 16 * 1024 * 1024  # largest file the code may write (stdout included)
_STDERR_CHARS = 65_536  # stderr is only read for crash diagnostics
_MAX_ERROR_LINES = 40
_MAX_PROCS = 128  # processes and threads a block may have at once (when the cap can be made effective)
_UID_BASE = 1_500_000_000  # private real uid of a root child: base + its pid
_KILL_BUDGET_S = 0.3
_MEMORY_HINTS = ("MemoryError", "Cannot allocate memory", "bad_alloc", "out of memory", "Out of memory",
                 "failed to allocate", "Unable to allocate")
_SYNTAX_ERRORS = ("SyntaxError", "IndentationError", "TabError")


@dataclass(frozen=True, kw_only=True)
class ExecutionResult:
    """What running one code block gave. Always data: failures are flags and an ``error`` text.

    ``exit_code`` is the child's exit status (negative: killed by that signal, as in :mod:`subprocess`),
    or ``None`` when it did not finish by itself (timed out) or never ran (refused, could not start).
    ``error`` is empty when the code ran without an error; otherwise the cleaned traceback (its last
    lines), or a one-line reason such as ``TimeoutError: code ran longer than 5 s``.
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

    @property
    def ok(self) -> bool:
        """Ran to completion with exit status 0 and no flag raised."""
        return (self.exit_code == 0 and not self.error and not self.timed_out and not self.memory_exceeded
                and not self.output_truncated and not self.crashed and not self.refused)

    @property
    def completed(self) -> bool:
        """Ran to completion without error; only the output may have been truncated."""
        return (self.exit_code == 0 and not self.error and not self.timed_out and not self.memory_exceeded
                and not self.crashed and not self.refused)

    def render(self, max_chars: int) -> str:
        """The text for the ```output block.

        Stdout when the code completed (also when only the output was truncated), otherwise the error's
        last line(s) (the whole caret block for a syntax error). Cut to ``max_chars`` characters with
        :data:`TRUNCATION_MARKER` appended when anything was cut; trailing whitespace stripped.
        """
        if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
            raise ValueError(f"max_chars must be a positive integer, got {max_chars!r}")
        if self.completed:
            text, cut = self.stdout.rstrip(), self.output_truncated
        else:
            text, cut = _error_summary(self.error).rstrip(), False
        if len(text) > max_chars:
            text, cut = text[:max_chars].rstrip(), True
        return text + TRUNCATION_MARKER if cut else text


def _error_summary(error: str) -> str:
    """The last line of an error; for syntax errors the ``File ...`` line, the code line and the caret."""
    lines = [line for line in error.rstrip().splitlines() if line.strip()]
    if not lines:
        return "Error: the code failed"
    last = lines[-1]
    if last.split(":", 1)[0] in _SYNTAX_ERRORS:
        for i in range(len(lines) - 1, -1, -1):
            if lines[i].lstrip().startswith('File "'):
                return textwrap.dedent("\n".join(lines[i:-1])) + "\n" + last
    return last


# ---------------------------------------------------------------------------------------------- code prep


def prepare_code(code: str, *, print_last_expression: bool) -> str:
    """Numina convention: if the last top-level statement is a bare expression, wrap it in ``print(...)``.

    A last statement that already is a ``print(...)`` call is left alone. Line numbers do not change.
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
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return code
    value = tree.body[-1].value
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "print":
        return code
    if value.end_lineno is None or value.end_col_offset is None:  # pragma: no cover - parse always sets them
        return code
    text = code.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    start = _offset(lines, value.lineno, value.col_offset)
    end = _offset(lines, value.end_lineno, value.end_col_offset)
    inner = text[start:end]
    if isinstance(value, ast.Tuple) and not inner.startswith("("):
        inner = f"({inner})"
    return f"{text[:start]}print({inner}){text[end:]}"


def _offset(lines: list[str], lineno: int, col_bytes: int) -> int:
    """Character offset in ``"\\n".join(lines)`` of an ast position (1-based line, UTF-8 byte column)."""
    before = sum(len(line) + 1 for line in lines[: lineno - 1])
    col = len(lines[lineno - 1].encode("utf-8")[:col_bytes].decode("utf-8", errors="replace"))
    return before + col


# ------------------------------------------------------------------------------------------------ prelude

# Runs inside the child as ``python -s -u -c _PRELUDE <json>``: sets the limits, caps sys.stdout, runs the
# code compiled as "<code>" in a fresh __main__ module and writes a status file the parent reads.
_PRELUDE = r'''
import os, sys

def _aimo_boot():
    import builtins, json, linecache, resource, traceback, types
    cfg = json.loads(sys.argv[1])
    main_pid = os.getpid()

    def setlim(res, soft, hard=None):
        hard = soft if hard is None else hard
        try:
            _, cur_hard = resource.getrlimit(res)
            if cur_hard != resource.RLIM_INFINITY:
                soft, hard = min(soft, cur_hard), min(hard, cur_hard)
            resource.setrlimit(res, (soft, hard))
        except (ValueError, OSError):
            pass

    def count_tasks(uid):
        n = 0
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                ruid, threads = None, 1
                with open("/proc/" + name + "/status") as f:
                    for line in f:
                        if line.startswith("Uid:"):
                            ruid = int(line.split()[1])
                        elif line.startswith("Threads:"):
                            threads = int(line.split()[1])
                if ruid == uid:
                    n += threads
            except (OSError, ValueError, IndexError):
                pass
        return n

    def cap_processes():
        nproc = cfg["nproc"]
        if os.geteuid() != 0:
            # Per-user count: leave room for what the user already runs.
            try:
                setlim(resource.RLIMIT_NPROC, count_tasks(os.getuid()) + nproc)
            except OSError:
                pass
            return
        # Root is exempt from RLIMIT_NPROC: move to a private real uid and drop the two capabilities
        # that exempt a process too. The effective uid stays 0, so files stay readable.
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            drop = (21, 24)  # CAP_SYS_ADMIN, CAP_SYS_RESOURCE
            for cap in drop:
                libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP: also gone after an exec
            os.setresuid(cfg["uid_base"] + main_pid, 0, 0)

            class Header(ctypes.Structure):
                _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

            class Data(ctypes.Structure):
                _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                            ("inheritable", ctypes.c_uint32)]

            header, data = Header(0x20080522, 0), (Data * 2)()
            if libc.capget(ctypes.byref(header), data) == 0:
                mask = 0xFFFFFFFF
                for cap in drop:
                    mask &= ~(1 << cap)
                data[0].effective &= mask
                data[0].permitted &= mask
                data[0].inheritable &= mask
                libc.capset(ctypes.byref(header), data)
        except Exception:
            pass
        setlim(resource.RLIMIT_NPROC, nproc)

    setlim(resource.RLIMIT_CORE, 0)
    setlim(resource.RLIMIT_CPU, cfg["cpu"], cfg["cpu"] + 1)
    setlim(resource.RLIMIT_FSIZE, cfg["fsize"])
    cap_processes()

    status_path = cfg["status"]

    def write_status(obj):
        if os.getpid() != main_pid:
            return
        try:
            with open(status_path, "w", encoding="utf-8") as f:
                json.dump(obj, f)
        except BaseException:
            pass

    class Capped:
        def __init__(self, stream, limit):
            self._stream, self._left = stream, limit

        def write(self, s):
            n = len(s)
            if self._left > 0:
                part = s if n <= self._left else s[: self._left]
                self._left -= len(part)
                self._stream.write(part)
            return n

        def writelines(self, lines):
            for line in lines:
                self.write(line)

        def flush(self):
            try:
                self._stream.flush()
            except (OSError, ValueError):
                pass

        def __getattr__(self, name):
            return getattr(self._stream, name)

    with open(cfg["code"], encoding="utf-8", errors="replace") as f:
        src = f.read()
    name = "<code>"
    linecache.cache[name] = (len(src), None, src.splitlines(True), name)
    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = module
    sys.argv = [name]
    sys.stdout = Capped(sys.stdout, cfg["out_chars"])
    sys.stderr = Capped(sys.stderr, cfg["err_chars"])
    setlim(resource.RLIMIT_AS, cfg["as_bytes"])

    try:
        exec(compile(src, name, "exec"), module.__dict__)
    except SystemExit as exc:
        code = exc.code
        write_status({"kind": "exit", "code": code if code is None or isinstance(code, int) else str(code)})
        raise
    except BaseException as exc:
        memory = isinstance(exc, MemoryError)
        try:
            tb = exc.__traceback__
            while tb is not None and tb.tb_frame.f_code.co_filename != name:
                tb = tb.tb_next
            text = "".join(traceback.format_exception(type(exc), exc, tb))
        except BaseException:
            try:
                text = type(exc).__name__ + ": " + str(exc)
            except BaseException:
                text = "MemoryError" if memory else "Exception"
        write_status({"kind": "exception", "memory": memory, "error": text})
        exc = tb = None
        raise SystemExit(1)
    write_status({"kind": "ok"})

_aimo_boot()
del _aimo_boot
'''


# ------------------------------------------------------------------------------------------ process control


def _wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s for the child to exit, without reaping it. True if it exited."""
    if timeout > 0:
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            fd = -1
        if fd >= 0:
            try:
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                poller.poll(max(1, math.ceil(timeout * 1000)))
            finally:
                os.close(fd)
            return _has_exited(pid)
        deadline = time.monotonic() + timeout
        delay = 0.001
        while not _has_exited(pid):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.02)
        return True
    return _has_exited(pid)


def _has_exited(pid: int) -> bool:
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # already reaped (e.g. SIGCHLD ignored): gone
        return True
    return info is not None


def _leftovers(sid: int, uid: int | None) -> list[int]:
    """Live (non-zombie) processes in session/group ``sid`` or with real uid ``uid``, from ``/proc``."""
    found: list[int] = []
    me = os.getpid()
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/status", encoding="utf-8", errors="replace") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            state = fields.get("State", "").split()
            if not state or state[0] in ("Z", "X"):
                continue
            ruid = int(fields.get("Uid", "-1").split()[0])
            pgid = int(fields.get("NSpgid", "-1").split()[-1])
            psid = int(fields.get("NSsid", "-1").split()[-1])
        except (OSError, ValueError, IndexError):
            continue
        if sid in (pgid, psid) or (uid is not None and ruid == uid):
            found.append(int(name))
    return found


def _kill_everything(pid: int, uid: int | None) -> bool:
    """SIGKILL the child's process group and sweep its session (and private uid) until nothing is left.

    Must run before the child (the group leader) is reaped: while it is a zombie its pid, and so the
    group and session id, cannot be taken by an unrelated process. True if nothing was left.
    """
    deadline = time.monotonic() + _KILL_BUDGET_S
    while True:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        left = _leftovers(pid, uid)
        if not left:
            return True
        for other in left:
            with contextlib.suppress(OSError):
                os.kill(other, signal.SIGKILL)
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _clean(text: str, root: str) -> str:
    """Remove the temporary folder from paths in an error text."""
    for path in {root, os.path.realpath(root)}:
        text = text.replace(path + os.sep + "work" + os.sep, "").replace(path + os.sep + "work", ".")
        text = text.replace(path + os.sep, "").replace(path, ".")
    return text


def _tail_lines(text: str, n: int) -> str:
    lines = text.rstrip().splitlines()
    if len(lines) <= n:
        return "\n".join(lines)
    head = [lines[0]] if lines[0].startswith("Traceback") else []
    return "\n".join([*head, "  ...", *lines[-n:]])


def _read_head(path: str, max_bytes: int) -> tuple[bytes, int]:
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return b"", 0
    return data, size


def _read_status(path: str) -> dict[str, object] | None:
    try:
        with open(path, encoding="utf-8") as f:
            status = json.loads(f.read(1_000_000))
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


# ---------------------------------------------------------------------------------------------- sandbox


class SubprocessSandbox:
    """Runs each code block in a fresh interpreter (see the module docstring for the limits)."""

    def __init__(self, config: SandboxConfig) -> None:
        if not isinstance(config, SandboxConfig):
            raise TypeError(f"config must be a SandboxConfig, got {type(config).__name__}")
        self.config = config
        self.python = config.python or sys.executable or "python3"
        self._closed = False

    # -- public

    def run(self, code: str, *, timeout_s: float | None = None) -> ExecutionResult:
        """Run one block. ``timeout_s`` can only lower ``config.timeout_s``. Never raises for bad code."""
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, got {type(code).__name__}")
        limit = self._timeout(timeout_s)
        start = time.monotonic()
        early = precheck(self.config, code, limit)
        if early is not None:
            return _with_seconds(early, time.monotonic() - start)
        prepared = prepare_code(code, print_last_expression=self.config.print_last_expression)
        root = tempfile.mkdtemp(prefix="aimo-sandbox-")
        try:
            result = self._run_in(root, prepared, limit, start)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return _with_seconds(result, time.monotonic() - start)

    def run_many(self, codes: Sequence[str], *, timeout_s: float | None = None) -> list[ExecutionResult]:
        """Run blocks concurrently, at most ``config.workers`` at a time; results in input order."""
        if isinstance(codes, str):
            raise TypeError("codes must be a sequence of str, not a str")
        codes = list(codes)
        for code in codes:
            if not isinstance(code, str):
                raise TypeError(f"code must be a str, got {type(code).__name__}")
        self._timeout(timeout_s)
        if len(codes) <= 1:
            return [self.run(code, timeout_s=timeout_s) for code in codes]
        with ThreadPoolExecutor(max_workers=min(self.config.workers, len(codes)),
                                thread_name_prefix="aimo-sandbox") as pool:
            return list(pool.map(lambda c: self.run(c, timeout_s=timeout_s), codes))

    def close(self) -> None:
        """Nothing is kept between runs; later runs raise ``RuntimeError``."""
        self._closed = True

    def __enter__(self) -> SubprocessSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals

    def _timeout(self, timeout_s: float | None) -> float:
        if self._closed:
            raise RuntimeError("the sandbox is closed")
        if timeout_s is None:
            return float(self.config.timeout_s)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or math.isnan(timeout_s):
            raise TypeError(f"timeout_s must be a number or None, got {timeout_s!r}")
        return min(float(self.config.timeout_s), float(timeout_s))

    def _env(self, work: str) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": work,
            "TMPDIR": work,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "PYTHONIOENCODING": "utf-8",
            "MPLBACKEND": "Agg",
        }
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                     "VECLIB_MAXIMUM_THREADS"):
            env[name] = "1"
        return env

    def _run_in(self, root: str, code: str, limit: float, start: float) -> ExecutionResult:
        cfg = self.config
        work = os.path.join(root, "work")
        os.mkdir(work, 0o700)
        paths = {name: os.path.join(root, name) for name in ("code.py", "stdout", "stderr", "status.json")}
        with open(paths["code.py"], "wb") as f:
            f.write(code.encode("utf-8", errors="replace"))
        out_chars = cfg.max_output_chars + 1  # one more than shown, so the parent sees the truncation
        boot = {
            "code": paths["code.py"],
            "status": paths["status.json"],
            "cpu": int(math.ceil(limit)) + 1,
            "fsize": max(_FSIZE_MIN_BYTES, 8 * out_chars),
            "as_bytes": cfg.memory_mb * 1024 * 1024,
            "out_chars": out_chars,
            "err_chars": _STDERR_CHARS,
            "nproc": _MAX_PROCS,
            "uid_base": _UID_BASE,
        }
        argv = [self.python, "-s", "-u", "-c", _PRELUDE, json.dumps(boot)]
        with open(paths["stdout"], "wb") as out, open(paths["stderr"], "wb") as err:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=work,
                                        env=self._env(work), start_new_session=True, close_fds=True)
            except OSError as exc:
                return ExecutionResult(error=f"sandbox: could not start {self.python}: {exc}")
        timed_out = False
        try:
            timed_out = not _wait_for_exit(proc.pid, start + limit - time.monotonic())
        finally:
            # Kill the group (and sweep the session) before reaping the leader; also on a normal exit, to
            # remove background processes the code left behind.
            uid = _UID_BASE + proc.pid if os.geteuid() == 0 else None
            _kill_everything(proc.pid, uid)
            with contextlib.suppress(subprocess.TimeoutExpired):  # a SIGKILLed process stuck in D state
                proc.wait(timeout=_KILL_BUDGET_S)
        return classify(cfg, root, paths, proc.returncode, timed_out, limit)


def precheck(config: SandboxConfig, code: str, limit: float) -> ExecutionResult | None:
    """The result for code that must not run (refused, too long, no time left); ``None`` if it may run."""
    if len(code) > config.max_code_chars:
        return ExecutionResult(error=f"refused: code is longer than {config.max_code_chars} characters",
                               refused=True)
    for pattern in config.refuse_patterns:
        if pattern in code:
            return ExecutionResult(error=f"refused: code uses {pattern!r}", refused=True)
    if limit <= 0:
        return ExecutionResult(error="TimeoutError: no time left to run the code", timed_out=True)
    return None


def classify(cfg: SandboxConfig, root: str, paths: dict[str, str], rc: int | None, timed_out: bool,
             limit: float, maxrss_kb: int | None = None) -> ExecutionResult:
    """Turn what a finished child left (exit status, stdout/stderr/status files) into an ExecutionResult.

    ``maxrss_kb`` (peak memory, when the caller knows it) separates a SIGKILL the code sent itself
    (``os.killpg(0, 9)``: a crash) from the kernel's out-of-memory kill; without it every SIGKILL we did
    not send counts as memory exceeded.
    """
    raw, size = _read_head(paths["stdout"], 4 * (cfg.max_output_chars + 1))
    stdout = raw.decode("utf-8", errors="replace")
    truncated = len(stdout) > cfg.max_output_chars or size > len(raw)
    stdout = stdout[: cfg.max_output_chars]
    err_raw, _ = _read_head(paths["stderr"], 4 * _STDERR_CHARS)
    stderr = _clean(err_raw.decode("utf-8", errors="replace"), root)
    status = _read_status(paths["status.json"])
    kind = status.get("kind") if status else None

    memory = crashed = False
    error = ""
    exit_code = rc
    if timed_out:
        exit_code = None
        error = f"TimeoutError: code ran longer than {limit:g} s"
    elif rc is None:  # pragma: no cover - the leader did not die after SIGKILL
        error = "Error: the code could not be stopped"
    elif rc < 0:
        signum = -rc
        if signum == signal.SIGXCPU:
            timed_out = True
            error = f"TimeoutError: code used more than {int(math.ceil(limit)) + 1} s of CPU time"
        elif any(hint in stderr for hint in _MEMORY_HINTS) or (
                signum == signal.SIGKILL and (maxrss_kb is None or maxrss_kb * 2 >= cfg.memory_mb * 1024)):
            # Nobody but us (before the deadline: nobody) sends SIGKILL; the kernel does when memory
            # runs out, and allocators abort or crash under the address-space limit.
            memory = True
            error = f"MemoryError: code used more than {cfg.memory_mb} MB (killed by {_signal_name(signum)})"
        else:
            crashed = True
            tail = _tail_lines(stderr, 10)
            reason = f"Crash: the code was killed by {_signal_name(signum)}"
            error = f"{tail}\n{reason}" if tail else reason
    elif kind == "exception" and status is not None:
        error = _tail_lines(_clean(str(status.get("error", "")), root), _MAX_ERROR_LINES)
        memory = bool(status.get("memory")) or error.rstrip().splitlines()[-1:] == ["MemoryError"]
        if not error:
            error = "Error: the code failed"
    elif rc != 0:
        code = status.get("code") if kind == "exit" and status is not None else rc
        tail = "" if kind == "exit" else _tail_lines(stderr, 10)
        error = f"{tail}\nSystemExit: {code}" if tail else f"SystemExit: {code}"
        memory = kind != "exit" and any(hint in stderr for hint in _MEMORY_HINTS)
    return ExecutionResult(stdout=stdout, error=error, exit_code=exit_code, timed_out=timed_out,
                           memory_exceeded=memory, output_truncated=truncated, crashed=crashed)


def _with_seconds(result: ExecutionResult, seconds: float) -> ExecutionResult:
    return ExecutionResult(stdout=result.stdout, error=result.error, exit_code=result.exit_code,
                           timed_out=result.timed_out, memory_exceeded=result.memory_exceeded,
                           output_truncated=result.output_truncated, crashed=result.crashed,
                           refused=result.refused, seconds=seconds)


def make_sandbox(config: SandboxConfig) -> SubprocessSandbox | PoolSandbox:
    """The sandbox ``config.kind`` names: the warm pool (default) or a fresh interpreter per block."""
    if config.kind == "subprocess":
        return SubprocessSandbox(config)
    from aimo_kernel.sandbox_pool import PoolSandbox  # noqa: PLC0415 - the pool module imports this one

    return PoolSandbox(config)
