"""A warm pool of sandbox workers: each code block runs in a child forked from a pre-imported interpreter.

What this covers
    * :class:`PoolSandbox` starts ``config.workers`` *template* processes once per run. Each template is a
      ``python -s`` interpreter, in its own session, with a scrubbed environment, that imports
      ``config.preload`` (math, numpy, sympy) and then waits on a pipe for requests. Per code block it
      ``fork()``s a fresh child, so the block starts with the imports done (about a millisecond instead of
      a second) and no state leaks between blocks: the child exits after one block.
    * The child, before running the code: starts its own session (so its process group is its pid),
      points stdin at ``/dev/null`` and stdout/stderr at files in a private temporary folder, works in
      ``<tmp>/work``, replaces the environment (``HOME``/``TMPDIR`` in the folder, no secrets), sets the
      limits (CPU time, file size, no core files, address space last) and reseeds ``random``/``numpy``.
      As root it also moves to a private uid (base + its pid) keeping only ``CAP_DAC_READ_SEARCH``
      (so it can still read the interpreter's files under e.g. a 0700 ``/root``), with
      ``no_new_privs``: it cannot signal the template or the caller, write outside its folder, raise
      its limits back, or escape ``RLIMIT_NPROC`` (fork bombs stop at 128 tasks).
      The template itself runs in an empty network namespace when it may create one (root), so blocks
      cannot reach the network. Every step is best-effort; where one fails the block still runs.
    * The template enforces the wall-clock timeout (a pidfd poll; no ``signal.alarm`` anywhere), then
      kills the child's process group and sweeps ``/proc`` for anything left in its session or with its
      private uid, before reaping the child (so its pid cannot be reused meanwhile). A child that ran
      to its end as a private uid sweeps itself (``kill(-1, SIGKILL)`` as that uid), which saves the
      template the ``/proc`` walk. The template is a child subreaper, so orphans come back to it.
    * The caller keeps a backstop: if a template dies, or is late past timeout + 0.5 s and stopped (a
      template still running gets 3 s more: on a loaded machine it is slow, not broken), the caller
      kills the child's group, the template's group, and starts a new template (imports in the
      background); the block's result says it crashed. A template that cannot start at all makes the pool fall back
      to :class:`~aimo_kernel.sandbox.SubprocessSandbox` for that block.
    * Results are classified exactly as in :mod:`aimo_kernel.sandbox` (same files, same flags).
    * Per-candidate state, when a caller wants it, is *replay*: ``run(code, history=[...])`` re-runs the
      candidate's earlier successful blocks (output discarded) in the same fresh child before the new
      block. Forking makes the fresh start cheap, earlier blocks are short, and a timeout or crash never
      loses state that must be rebuilt; persistent per-candidate processes would keep 48+ interpreters
      alive across the worker cap and bring back state leaks and kill-and-restore logic.
    * :meth:`PoolSandbox.arun` awaits a block from an event loop (it runs in the pool's thread pool).

What this does not cover
    A security boundary against a determined adversary (no seccomp, the child can still read any file);
    a zygote that shares the imported pages between templates (each template imports on its own, in
    parallel, once); ``atexit`` handlers registered by the code (the child leaves with ``os._exit``);
    the solver passing per-candidate histories (it does not yet). Linux only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from aimo_kernel.config import SandboxConfig
from aimo_kernel.sandbox import (
    _FSIZE_MIN_BYTES,
    _MAX_PROCS,
    _STDERR_CHARS,
    _UID_BASE,
    ExecutionResult,
    SubprocessSandbox,
    _kill_everything,
    _with_seconds,
    classify,
    precheck,
    prepare_code,
)

__all__ = ["PoolSandbox"]

log = logging.getLogger(__name__)

_BACKSTOP_S = 0.5  # how long past the timeout the caller waits for a template before checking on it
_GRACE_S = 3.0  # more time for a template that is late but still running (a loaded machine)
_READY_TIMEOUT_S = 300.0  # a template importing numpy+sympy on a loaded machine; beyond this it is broken
_PATHS = ("code.py", "history.json", "stdout", "stderr", "status.json")

# The template: ``python -s -c _TEMPLATE <json>``. Requests and replies are JSON lines on its original
# stdin/stdout (moved to other fds so that nothing an import prints can corrupt the channel).
_TEMPLATE = r'''
import os, sys

def _aimo_template():
    import json, select, signal, time
    cfg = json.loads(sys.argv[1])
    ctl_in, ctl_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    t0 = time.monotonic()
    failed = {}
    for name in cfg["preload"]:
        try:
            __import__(name)
        except BaseException as exc:  # a missing optional module must not stop the pool
            failed[name] = type(exc).__name__ + ": " + str(exc)
    import builtins, ctypes, gc, io, linecache, random, resource, threading, traceback, types
    try:  # first calls load lazily (numpy's seeding: ~30 ms, sympy's solvers): do it once, here
        if "numpy" in sys.modules:
            np = sys.modules["numpy"]
            np.random.seed()
            int(np.linalg.det(np.eye(2)))
        if "sympy" in sys.modules:
            sp = sys.modules["sympy"]
            x = sp.Symbol("x")
            sp.factor(x**2 - 1), sp.solve(x**2 - 4, x), sp.expand((x + 1)**3), sp.isprime(97)
            sp.series(sp.sin(x), x, 0, 4), sp.simplify(sp.sin(x)**2 + sp.cos(x)**2), sp.factorint(360)
            sp.nsimplify(0.5), sp.Rational(1, 3) + 1, sp.binomial(10, 3), sp.divisors(12)
    except Exception:
        pass
    gc.collect()
    gc.freeze()  # the children's collections then never touch (and copy) the template's objects
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans of the blocks come back here
    root = os.geteuid() == 0
    netns = root and libc.unshare(0x40000000) == 0  # CLONE_NEWNET: no network for the blocks
    try:
        last_cap = int(open("/proc/sys/kernel/cap_last_cap").read())
    except (OSError, ValueError):
        last_cap = 40

    def send(obj):
        data = (json.dumps(obj) + "\n").encode()
        while data:
            data = data[os.write(ctl_out, data):]

    def setlim(res, soft, hard=None):
        hard = soft if hard is None else hard
        try:
            _, cur_hard = resource.getrlimit(res)
            if cur_hard != resource.RLIM_INFINITY:
                soft, hard = min(soft, cur_hard), min(hard, cur_hard)
            resource.setrlimit(res, (soft, hard))
        except (ValueError, OSError):
            pass

    def proc_scan(want):
        """(pid, ruid, sid, pgid, threads) of live processes passing ``want``, from /proc."""
        found = []
        me = os.getpid()
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me:
                continue
            try:
                with open("/proc/" + name + "/status") as f:
                    fields = dict(line.split(":", 1) for line in f if ":" in line)
                if fields["State"].split()[0] in ("Z", "X"):
                    continue
                row = (int(name), int(fields["Uid"].split()[0]), int(fields["NSsid"].split()[-1]),
                       int(fields["NSpgid"].split()[-1]), int(fields["Threads"].split()[0]))
            except (OSError, ValueError, IndexError, KeyError):
                continue
            if want(row):
                found.append(row)
        return found

    user_tasks = 0 if root else sum(r[4] for r in proc_scan(lambda r: r[1] == os.getuid()))

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

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    def drop_to(uid, work):
        """Become ``uid`` keeping only CAP_DAC_READ_SEARCH (read the interpreter's files). True if done."""
        try:
            os.chown(work, uid, uid)
            libc.prctl(8, 1, 0, 0, 0)  # PR_SET_KEEPCAPS across setuid
            for cap in range(last_cap + 1):
                if cap != 2:
                    libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            data = (Data * 2)()
            data[0].effective = data[0].permitted = 1 << 2
            libc.capset(ctypes.byref(Header(0x20080522, 0)), data)
            libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: no setuid binaries
            return os.getresuid() == (uid, uid, uid)
        except Exception:
            return False

    def setup_child(req):
        """Everything between fork and the code: session, files, folder, env, limits, identity."""
        os.setsid()
        os.close(ctl_in)
        os.close(ctl_out)
        base = req["root"] + "/"
        for fd, name in ((1, "stdout"), (2, "stderr")):
            opened = os.open(base + name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(opened, fd)
            os.close(opened)
        status_fd = os.open(base + "status.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(base + "code.py", encoding="utf-8", errors="replace") as f:
            src = f.read()
        with open(base + "history.json", encoding="utf-8") as f:
            history = json.load(f)
        work = base + "work"
        os.chdir(work)
        os.environ.clear()
        os.environ.update(req["env"])
        setlim(resource.RLIMIT_CORE, 0)
        setlim(resource.RLIMIT_CPU, req["cpu"], req["cpu"] + 1)
        setlim(resource.RLIMIT_FSIZE, req["fsize"])
        private = root and drop_to(req["uid_base"] + os.getpid(), work)
        setlim(resource.RLIMIT_NPROC, req["nproc"] + (0 if private or root else user_tasks))
        random.seed()
        np = sys.modules.get("numpy")
        if np is not None:
            try:
                np.random.seed()
            except Exception:
                pass
        return status_fd, src, history, private

    def run_code(src, history, status_fd, out_chars):
        """Run the replayed history (output discarded) and the code in a fresh __main__; write status."""
        main_pid = os.getpid()
        name = "<code>"
        linecache.cache[name] = (len(src), None, src.splitlines(True), name)
        module = types.ModuleType("__main__")
        module.__dict__["__builtins__"] = builtins
        sys.modules["__main__"] = module
        sys.argv = [name]
        sys.stdout = Capped(io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                             errors="replace", write_through=True), out_chars)
        sys.stderr = Capped(io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                             errors="backslashreplace", write_through=True), cfg["err_chars"])
        sys.stdin = open(os.devnull)
        real_out, status, exit_code = sys.stdout, {"kind": "ok"}, 0
        setlim(resource.RLIMIT_AS, cfg["as_bytes"])
        sys.stdout = Capped(real_out, 0)
        try:
            for old in history:  # replayed state: its output was shown before
                exec(compile(old, "<history>", "exec"), module.__dict__)
        except BaseException:
            pass
        sys.stdout = real_out
        try:
            exec(compile(src, name, "exec"), module.__dict__)
            shutdown = getattr(threading, "_shutdown", None)
            if shutdown is not None:
                shutdown()  # like the interpreter: wait for non-daemon threads
        except SystemExit as exc:
            code = exc.code
            if code is None or (isinstance(code, int) and -2**31 <= code < 2**31):
                exit_code, status = code or 0, {"kind": "exit", "code": code}
            else:
                exit_code, status = 1, {"kind": "exit", "code": str(code)}
                try:
                    print(code, file=sys.stderr)
                except BaseException:
                    pass
        except BaseException as exc:
            memory = isinstance(exc, MemoryError)
            try:
                tb = exc.__traceback__
                while tb is not None and tb.tb_frame.f_code.co_filename != name:
                    tb = tb.tb_next
                text = "".join(traceback.format_exception(type(exc), exc, tb))
            except BaseException:
                text = "MemoryError" if memory else "Exception"
            exc = tb = None
            exit_code, status = 1, {"kind": "exception", "memory": memory, "error": text}
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        return main_pid, status, exit_code

    def child(req):
        status_fd, src, history, private = setup_child(req)
        main_pid, status, exit_code = run_code(src, history, status_fd, req["out_chars"])
        if os.getpid() != main_pid:  # a fork the code made, finishing the code: no report
            os._exit(exit_code & 0xFF)
        if private and os.getresuid()[0] == req["uid_base"] + main_pid:
            # Kill every other process of this private uid: all of them are the code's leftovers.
            try:
                os.kill(-1, signal.SIGKILL)
                status["swept"] = True
            except ProcessLookupError:  # nothing else was left
                status["swept"] = True
            except OSError:
                pass
        try:
            os.write(status_fd, json.dumps(status).encode())
        except BaseException:
            pass
        os._exit(exit_code & 0xFF)

    def wait_exit(pid, timeout):
        """Wait up to ``timeout`` s for the child to exit without reaping it. True if it exited."""
        deadline = time.monotonic() + timeout
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            fd = -1
        while True:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            left = deadline - time.monotonic()
            if info is not None or left <= 0:
                if fd >= 0:
                    os.close(fd)
                return info is not None
            if fd >= 0:
                select.select([fd], [], [], left)
            else:
                time.sleep(min(0.005, left))

    def sweep(pid, uid):
        """SIGKILL the child's group and anything in its session or with its uid, until none is left."""
        deadline = time.monotonic() + 0.5
        while True:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            left = proc_scan(lambda r: pid in (r[2], r[3]) or (uid is not None and r[1] == uid))
            if not left or time.monotonic() > deadline:
                return not left
            for row in left:
                try:
                    os.kill(row[0], signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.002)

    def handle(req):
        try:
            pid = os.fork()
        except OSError as exc:
            return {"done": True, "error": "sandbox: fork failed: " + str(exc)}
        if pid == 0:
            try:
                child(req)
            finally:
                os._exit(70)
        send({"started": pid})
        exited = wait_exit(pid, req["timeout"])
        swept = False
        if exited:
            try:
                with open(req["root"] + "/status.json") as f:
                    swept = bool(json.loads(f.read() or "{}").get("swept"))
            except (OSError, ValueError):
                pass
        if swept:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        else:
            sweep(pid, req["uid_base"] + pid if root else None)
        _, status, usage = os.wait4(pid, 0)
        while True:  # reap orphans handed to us as subreaper
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        return {"done": True, "status": status, "timed_out": not exited, "maxrss_kb": usage.ru_maxrss}

    send({"ready": True, "pid": os.getpid(), "failed": failed, "seconds": time.monotonic() - t0,
          "netns": netns})
    reader = os.fdopen(ctl_in, "rb", buffering=0)
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = reader.read(65536)
            if not chunk:
                os._exit(0)
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        send(handle(json.loads(line)))

_aimo_template()
'''


class _Template:
    """One warm template process and its request/reply pipes. Used by one thread at a time (``lock``)."""

    def __init__(self, python: str, boot: dict[str, object], home: str, env: dict[str, str]) -> None:
        self.python, self.boot, self.home, self.env = python, boot, home, env
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready = False
        self.info: dict[str, object] = {}
        self.started_at = 0.0
        self._buf = b""
        self.start()

    def start(self) -> None:
        """Start the process; it imports in the background and says when it is ready."""
        self.ready, self._buf, self.started_at = False, b"", time.monotonic()
        try:
            with open(os.path.join(self.home, "template.log"), "ab") as log_file:
                self.proc = subprocess.Popen(
                    [self.python, "-s", "-c", _TEMPLATE, json.dumps(self.boot)], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=log_file, cwd=self.home, env=self.env,
                    start_new_session=True, bufsize=0)
        except OSError as exc:
            log.warning("sandbox pool: could not start %s: %s", self.python, exc)
            self.proc = None

    def wait_ready(self, deadline: float) -> bool:
        """Wait for the template's ready line; False (and the process killed) if it never comes."""
        if self.ready:
            return True
        if self.proc is None:
            return False
        msg = self.read(deadline)
        if msg is None or not msg.get("ready"):
            self.kill()
            return False
        self.ready, self.info = True, msg
        self.info["seconds_to_ready"] = time.monotonic() - self.started_at
        if msg.get("failed"):
            log.warning("sandbox pool: could not preload %s", msg["failed"])
        return True

    def send(self, obj: dict[str, object]) -> bool:
        if self.proc is None or self.proc.stdin is None:
            return False
        data = (json.dumps(obj) + "\n").encode()
        try:
            while data:
                data = data[os.write(self.proc.stdin.fileno(), data):]
        except (OSError, ValueError):
            return False
        return True

    def read(self, deadline: float) -> dict[str, object] | None:
        """The next JSON line, or None on EOF, garbage or the deadline."""
        if self.proc is None or self.proc.stdout is None:
            return None
        fd = self.proc.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(max(1, int(left * 1000))):
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except ValueError:
            return None
        return msg if isinstance(msg, dict) else None

    def running(self) -> bool:
        """The process exists and is neither stopped nor a zombie (from ``/proc``)."""
        if self.proc is None:
            return False
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state in ("R", "S", "D")

    def kill(self) -> None:
        """Kill the template (its whole session) and reap it."""
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


def _shutdown(templates: list[_Template], home: str) -> None:
    for template in templates:
        template.kill()
    shutil.rmtree(home, ignore_errors=True)


class PoolSandbox:
    """Runs code blocks in children forked from warm templates (see the module docstring)."""

    def __init__(self, config: SandboxConfig) -> None:
        if not isinstance(config, SandboxConfig):
            raise TypeError(f"config must be a SandboxConfig, got {type(config).__name__}")
        self.config = config
        self.python = config.python or sys.executable or "python3"
        self.startup_seconds: float | None = None  # set once every template has been ready once
        self._fallback = SubprocessSandbox(config)
        self._home = tempfile.mkdtemp(prefix="aimo-pool-")
        boot = {"preload": list(config.preload), "as_bytes": config.memory_mb * 1024 * 1024,
                "err_chars": _STDERR_CHARS}
        self._created = time.monotonic()
        env = self._fallback._env(self._home)
        self._templates = [_Template(self.python, boot, self._home, env) for _ in range(config.workers)]
        self._free: queue.Queue[_Template] = queue.Queue()
        for template in self._templates:
            self._free.put(template)
        self._ready_ids: set[int] = set()
        self._ready_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="aimo-pool")
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown, self._templates, self._home)

    # -- public

    def wait_ready(self, timeout_s: float = _READY_TIMEOUT_S) -> float | None:
        """Block until every template has imported its modules; returns :attr:`startup_seconds`."""
        deadline = time.monotonic() + timeout_s
        for template in self._templates:
            with template.lock:
                if template.wait_ready(deadline):
                    self._note_ready(template)
        return self.startup_seconds

    def template_pids(self) -> list[int]:
        """Pids of the running templates (for tests and diagnostics)."""
        return [t.proc.pid for t in self._templates if t.proc is not None]

    def run(self, code: str, *, timeout_s: float | None = None, history: Sequence[str] = ()) -> ExecutionResult:
        """Run one block (after replaying ``history``, the candidate's earlier blocks, output discarded).

        ``timeout_s`` can only lower ``config.timeout_s``. Waits for a free worker. Never raises for bad code.
        """
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, got {type(code).__name__}")
        if isinstance(history, str) or not all(isinstance(h, str) for h in history):
            raise TypeError("history must be a sequence of str")
        limit = self._timeout(timeout_s)
        early = precheck(self.config, code, limit)
        if early is not None:
            return early
        prepared = prepare_code(code, print_last_expression=self.config.print_last_expression)
        template = self._free.get()
        try:
            with template.lock:
                if not template.wait_ready(time.monotonic() + _READY_TIMEOUT_S):
                    template.start()  # try a new one next time; this block runs the slow way
                    return self._fallback.run(code, timeout_s=limit)
                self._note_ready(template)
                start = time.monotonic()
                result = self._run_on(template, prepared, list(history), limit, start)
        finally:
            self._free.put(template)
        return _with_seconds(result, time.monotonic() - start)

    async def arun(self, code: str, *, timeout_s: float | None = None,
                   history: Sequence[str] = ()) -> ExecutionResult:
        """:meth:`run` for an event loop: runs in the pool's threads, the loop keeps going meanwhile.

        Cancelling the awaiting task does not stop the block; it ends at its timeout at the latest.
        """
        loop = asyncio.get_running_loop()
        call = functools.partial(self.run, code, timeout_s=timeout_s, history=history)
        return await loop.run_in_executor(self._executor, call)

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
        return list(self._executor.map(lambda c: self.run(c, timeout_s=timeout_s), codes))

    def close(self) -> None:
        """Kill the templates and delete the pool's folder; later runs raise ``RuntimeError``."""
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
        return self._fallback._timeout(timeout_s)

    def _note_ready(self, template: _Template) -> None:
        """Record start-up: the first time every template has been ready, log what it cost once."""
        with self._ready_lock:
            if self.startup_seconds is not None or id(template) in self._ready_ids:
                return
            self._ready_ids.add(id(template))
            if len(self._ready_ids) == len(self._templates):
                self.startup_seconds = time.monotonic() - self._created
                log.info("sandbox pool: %d workers ready in %.2f s (preloaded %s)", len(self._templates),
                         self.startup_seconds, ", ".join(self.config.preload) or "nothing")

    def _request(self, root: str, limit: float) -> dict[str, object]:
        cfg = self.config
        out_chars = cfg.max_output_chars + 1  # one more than shown, so truncation is visible
        return {"root": root, "timeout": limit, "env": self._fallback._env(os.path.join(root, "work")),
                "cpu": int(limit) + 2, "fsize": max(_FSIZE_MIN_BYTES, 8 * out_chars), "out_chars": out_chars,
                "nproc": _MAX_PROCS, "uid_base": _UID_BASE}

    def _run_on(self, template: _Template, code: str, history: list[str], limit: float,
                start: float) -> ExecutionResult:
        root = tempfile.mkdtemp(prefix="aimo-sandbox-")
        try:
            paths = {name: os.path.join(root, name) for name in _PATHS}
            os.mkdir(os.path.join(root, "work"), 0o700)
            os.chmod(root, 0o711)  # the child's private uid must pass through to work/
            with open(paths["code.py"], "wb") as f:
                f.write(code.encode("utf-8", errors="replace"))
            with open(paths["history.json"], "w", encoding="utf-8") as f:
                json.dump(history, f)
            pid, reply = self._exchange(template, self._request(root, limit), start + limit + _BACKSTOP_S)
            if reply is None:
                return self._recover(template, pid, root, paths, limit, start)
            if "error" in reply:
                return ExecutionResult(error=str(reply["error"]), crashed=True)
            status, maxrss = reply.get("status"), reply.get("maxrss_kb")
            rc = os.waitstatus_to_exitcode(status) if isinstance(status, int) else None
            return classify(self.config, root, paths, rc, bool(reply.get("timed_out")), limit,
                            maxrss if isinstance(maxrss, int) else None)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    @staticmethod
    def _exchange(template: _Template, request: dict[str, object],
                  deadline: float) -> tuple[int | None, dict[str, object] | None]:
        """Send a request; the child's pid and the final reply (None: the template died or stalled)."""
        if not template.send(request):
            return None, None
        first = template.read(deadline)
        if first is None or "done" in first:
            return None, first
        pid = first.get("started")
        if not isinstance(pid, int):
            return None, None
        reply = template.read(deadline)
        if reply is None and template.running():
            # Late but alive and not stopped: a loaded machine, not a broken template. Killing it would
            # cost a re-import; give it a little longer.
            reply = template.read(time.monotonic() + _GRACE_S)
        return pid, reply

    def _recover(self, template: _Template, pid: int | None, root: str, paths: dict[str, str], limit: float,
                 start: float) -> ExecutionResult:
        """The template died or stalled: kill the child and the template, start a new one, say so."""
        if pid is not None:
            _kill_everything(pid, _UID_BASE + pid if os.geteuid() == 0 else None)
        template.kill()
        template.start()
        log.warning("sandbox pool: a worker died or stalled; restarted it")
        if time.monotonic() - start >= limit:
            return classify(self.config, root, paths, None, True, limit)
        shown = classify(self.config, root, paths, 0, False, limit)
        return ExecutionResult(stdout=shown.stdout, output_truncated=shown.output_truncated, crashed=True,
                               error="Crash: the sandbox worker running the code died")
