"""The code that runs inside the sandbox's worker processes: the template and the session processes.

This file is executed as a script (``python -s -E worker.py <boot json>``) by
:class:`aimo_kernel.sandbox.process.WorkerProcess`, for the warm pool and the fresh-interpreter sandbox
alike, so both give the same guarantees. It imports nothing from the package (it must start in a bare
interpreter) and is importable for tests. Linux only.

What this covers
    * **Template** (:func:`main`, :class:`Template`): imports ``preload`` once, moves into an empty
      network namespace when it may, probes what the kernel allows (:func:`probe`), then serves JSON-line
      requests on its original stdin/stdout: ``open`` a session (with a first block: a stateless block is
      ``open`` with ``once``), ``exec`` a block in it, ``close`` it. After each reply it prepares the next
      session ahead of time, so a request only hands over the code.
    * **Session process** (:func:`block_main`): forked into a fresh PID namespace, where it is pid 1.
      Ahead of its request it unshares a mount and an IPC namespace, mounts size-capped private tmpfs
      over every shared writable place (``/tmp``, ``/var/tmp``, ``/dev/shm``, ``/run/lock``) and a
      private ``/proc``, joins its own memory cgroup, starts its own session, puts stdout/stderr/status
      on memfds the template reads, and becomes a private uid with only ``CAP_DAC_READ_SEARCH`` (as
      root) or no capabilities. Then it runs blocks (:func:`run_block`): compile, refuse, show the last
      value, exec, report. Functions it needs after model code ran are bound before, and ``builtins``
      is restored, so patched modules cannot break the report.
    * **Ending**: when the session process exits, or the template kills it (timeout, close), the kernel
      kills everything else in its PID namespace and drops its mounts (the tmpfs files) and IPC
      objects. The template waits for that, reads the exit status and the cgroup's OOM count. Nothing
      the block can write or patch takes part in the decision.
    * Degraded kernels (:func:`probe`): without namespaces the session is swept by session id and uid
      and works in a folder of its own, deleted afterwards; without a cgroup the template polls the
      proportional memory of the session's process tree and kills it past the limit.

What this does not cover
    seccomp filters, a read-only root filesystem, or any limit on reading files. Signals a session
    process sends itself without a handler are dropped by the kernel (it is pid 1 of its namespace):
    ``os.kill(os.getpid(), SIGKILL)`` does not end a block.
"""

# ruff: noqa: SIM105 - plain try/except/pass: much of this runs after model code, which may patch contextlib

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or ".") == _HERE:  # run as a script: do not shadow stdlib names
    sys.path.pop(0)

import ast  # noqa: E402
import builtins  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import linecache  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import types  # noqa: E402
from typing import Any, cast  # noqa: E402

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWUSER = (
    0x00020000, 0x08000000, 0x20000000, 0x40000000, 0x10000000)
MS_REC, MS_PRIVATE, MS_NOSUID, MS_NODEV = 0x4000, 0x40000, 0x2, 0x4
MS_BIND, MS_REMOUNT, MS_RDONLY = 0x1000, 0x20, 0x1
SHARED_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
CODE_NAME = "<code>"
KILL_WAIT_S = 0.4  # how long the template waits for a killed namespace to empty before it replies
ERROR_CHARS = 8_000  # longest exception message kept (head + tail); a 100 MB message must not be copied
CAP_DAC_READ_SEARCH = 2
SPARE_NAME = "aimo-spare"  # process name of a session waiting for its first request

# Bound before model code runs: a block may patch os, json or builtins; the worker must keep working.
_write, _read, _exit, _close, _dup2 = os.write, os.read, os._exit, os.close, os.dup2
_ftruncate, _lseek, _fstat, _pread, _pwrite = os.ftruncate, os.lseek, os.fstat, os.pread, os.pwrite
_dumps, _loads = json.dumps, json.loads
_isinstance, _len, _str, _type, _min = isinstance, len, str, type, min
_BUILTINS_DICT = builtins.__dict__
_BUILTINS = dict(builtins.__dict__)

_libc: Any = None


def libc() -> Any:
    """The C library (loaded once per process image)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def read_text(path: str) -> str:
    """The whole of a (small, usually /proc or /sys) text file."""
    with open(path) as f:
        return f.read()


def set_name(name: str) -> None:
    """The process name (``/proc/<pid>/comm``)."""
    libc().prctl(15, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)  # PR_SET_NAME


# ----------------------------------------------------------------------------------------------- framing


def send_line(fd: int, obj: object) -> None:
    """Write one JSON line to ``fd`` completely."""
    data = (_dumps(obj) + "\n").encode("utf-8", errors="replace")
    while data:
        data = data[_write(fd, data):]


class LineReader:
    """Reads JSON lines from a pipe; ``None`` at end of file or on a line that is not an object."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buf = fd, b""

    def next(self) -> dict[str, Any] | None:
        while b"\n" not in self.buf:
            chunk = _read(self.fd, 1 << 20)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            msg = _loads(line)
        except ValueError:
            return None
        return msg if _isinstance(msg, dict) else None


# ---------------------------------------------------------------------------------------------- limits


def setlim(res: int, soft: int, hard: int | None = None) -> None:
    """Lower a resource limit (never above the current hard limit); best effort."""
    hard = soft if hard is None else hard
    try:
        _, cur_hard = resource.getrlimit(res)
        if cur_hard != resource.RLIM_INFINITY:
            soft, hard = _min(soft, cur_hard), _min(hard, cur_hard)
        resource.setrlimit(res, (soft, hard))
    except (ValueError, OSError):
        pass


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def drop_privileges(uid: int | None, keep: int | None) -> bool:
    """Become ``uid`` (None: stay) keeping only capability ``keep``; no new privileges. True if done."""
    c = libc()
    try:
        last_cap = int(read_text("/proc/sys/kernel/cap_last_cap"))
    except (OSError, ValueError):
        last_cap = 40
    try:
        c.prctl(8, 1, 0, 0, 0)  # PR_SET_KEEPCAPS across setuid
        for cap in range(last_cap + 1):
            if cap != keep:
                c.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP: gone after an exec too
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        data = (_CapData * 2)()
        if keep is not None:
            data[0].effective = data[0].permitted = 1 << keep
        ok = c.capset(ctypes.byref(_CapHeader(0x20080522, 0)), data) == 0
        c.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: no setuid binaries
        return ok and (uid is None or os.getresuid() == (uid, uid, uid))
    except Exception:
        return False


# --------------------------------------------------------------------------------------------- cgroups


def cgroup_base() -> tuple[str, str] | None:
    """(version, folder) where this process may create memory cgroups, or None."""
    try:
        lines = read_text("/proc/self/cgroup").splitlines()
    except OSError:
        return None
    for line in lines:
        hid, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hid == "0" and controllers == "":
            folder = "/sys/fs/cgroup" + path.rstrip("/")
            try:
                if "memory" in read_text(folder + "/cgroup.subtree_control").split():
                    return "v2", folder
            except OSError:
                pass
        elif "memory" in controllers.split(","):
            folder = "/sys/fs/cgroup/memory" + path.rstrip("/")
            if os.path.exists(folder + "/memory.limit_in_bytes"):
                return "v1", folder
    return None


def cgroup_create(base: tuple[str, str], name: str, limit_bytes: int) -> str | None:
    """Make a memory cgroup named ``name`` under ``base`` limited to ``limit_bytes``; its path or None."""
    version, folder = base
    path = folder + "/" + name
    try:
        os.mkdir(path)
        files: tuple[tuple[str, int], ...]
        if version == "v2":
            files = (("memory.max", limit_bytes), ("memory.swap.max", 0), ("memory.oom.group", 1))
        else:
            files = (("memory.limit_in_bytes", limit_bytes), ("memory.memsw.limit_in_bytes", limit_bytes))
        for i, (fname, value) in enumerate(files):
            try:
                with open(path + "/" + fname, "w") as f:
                    f.write(str(value))
            except OSError:
                if i == 0:
                    raise
        return path
    except OSError:
        cgroup_remove(path)
        return None


def cgroup_oom_kills(path: str) -> int:
    """How many processes the kernel killed for memory in the cgroup at ``path``."""
    for fname in ("memory.events", "memory.oom_control"):
        try:
            for line in read_text(path + "/" + fname).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return 0


def cgroup_remove(path: str) -> bool:
    """Remove an (empty) cgroup; False while it still holds dying processes."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------------------- code handling


def refused_name(code: types.CodeType, patterns: list[str]) -> str | None:
    """The refused pattern the compiled code *uses*: as a name, attribute, import, or a string naming it.

    Words in comments, docstrings and prose strings do not count (``"no subprocess here"``), so a model
    explaining its code is not refused; ``__import__("subprocess")`` still is. Walking the code object
    (not the AST) keeps a 1 MB block cheap.
    """
    wanted = set(patterns)
    stack = [code]
    while stack:
        co = stack.pop()
        for name in (*co.co_names, *co.co_varnames, *co.co_cellvars, *co.co_freevars):
            if name in wanted:
                return name
        for const in co.co_consts:
            if isinstance(const, types.CodeType):
                stack.append(const)
            elif isinstance(const, str) and len(const) < 200 and const.strip().split(".")[0] in wanted:
                return const.strip().split(".")[0]
    return None


FULL_PARSE_CHARS = 200_000  # above this, only the tail is parsed to find the last statement (ast is slow)


def last_statement_tree(code: str) -> tuple[ast.Module, int] | None:
    """(AST, line offset) of a suffix of ``code`` that holds its last top-level statement.

    Small code is parsed whole. For large code, parsing everything into Python objects takes seconds,
    so suffixes starting at a column-0 line are tried from the end (at most 50).
    """
    if len(code) <= FULL_PARSE_CHARS:
        try:
            return ast.parse(code, CODE_NAME), 0
        except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
            return None
    lines = code.split("\n")
    tried = 0
    for i in range(len(lines) - 1, max(-1, len(lines) - 5000), -1):
        head = lines[i][:1]
        if not head or head in " \t#)]}":
            continue
        tried += 1
        try:
            return ast.parse("\n".join(lines[i:]), CODE_NAME), i
        except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
            if tried >= 50:
                return None
    return None


def add_display(code: str, tree: ast.Module, line_offset: int = 0) -> str:
    """If the last top-level statement is a bare expression, show its value unless it is ``None``.

    This is what a notebook does, and what models trained on notebook-style tool calls read; it also
    means a final ``main()`` that prints and returns nothing does not add a stray ``None`` line (ToRA's
    executor showed only stdout, so its transcripts never contain one). The value is bound to ``_`` as
    in a notebook. Line numbers do not change.
    """
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return code
    value = tree.body[-1].value
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "print":
        return code
    if value.end_lineno is None or value.end_col_offset is None:
        return code
    lines = code.split("\n")
    start = _offset(lines, value.lineno + line_offset, value.col_offset)
    end = _offset(lines, value.end_lineno + line_offset, value.end_col_offset)
    inner = code[start:end]
    shown = f"print(_) if (_ := ({inner})) is not None else None"
    return f"{code[:start]}{shown}{code[end:]}"


def _offset(lines: list[str], lineno: int, col_bytes: int) -> int:
    """Character offset in ``"\\n".join(lines)`` of an ast position (1-based line, UTF-8 byte column)."""
    before = sum(len(line) + 1 for line in lines[: lineno - 1])
    col = len(lines[lineno - 1].encode("utf-8")[:col_bytes].decode("utf-8", errors="replace"))
    return before + col


def short(text: str, limit: int = ERROR_CHARS) -> str:
    """``text`` cut to its first and last ``limit // 2`` characters."""
    if _len(text) <= limit:
        return text
    half = limit // 2
    return text[:half] + f" ... [{_len(text) - 2 * half} characters cut] ... " + text[-half:]


def format_error(exc: BaseException) -> str:
    """The traceback from the block's first frame on, the message bounded (never copies a huge one)."""
    try:
        if isinstance(exc, SyntaxError):
            return "".join(traceback.format_exception_only(type(exc), exc))[-ERROR_CHARS:]
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != CODE_NAME:
            tb = tb.tb_next
        frames = "".join(traceback.format_tb(tb, limit=-30)) if tb is not None else ""
        try:
            message = short(str(exc))
        except BaseException:
            message = "<exception message could not be shown>"
        name = type(exc).__name__
        head = "Traceback (most recent call last):\n" if frames else ""
        return f"{head}{frames}{name}: {message}" if message else f"{head}{frames}{name}"
    except BaseException:
        return "MemoryError" if isinstance(exc, MemoryError) else type(exc).__name__


# ------------------------------------------------------------------------------------------ the block


class Capped(io.TextIOBase):
    """A text stream keeping the first ``limit`` characters (written through) and the last ``limit``."""

    def __init__(self, fd: int, limit: int, errors: str) -> None:
        super().__init__()
        self._raw = io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8", errors=errors,
                                     write_through=True)
        self._left, self._limit, self.tail, self.dropped = limit, limit, "", 0

    def write(self, s: str) -> int:
        if not _isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {_type(s).__name__}")
        n = _len(s)
        if self._left > 0:
            part = s if n <= self._left else s[: self._left]
            self._left -= _len(part)
            self._raw.write(part)
            s = s[_len(part):]
        if s:
            self.dropped += _len(s)
            self.tail = (self.tail + s[-self._limit:])[-self._limit:]
        return n

    def flush(self) -> None:
        try:
            self._raw.flush()
        except (OSError, ValueError):
            pass

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._raw.fileno()


def disarm() -> None:
    """Stop what model code set up to interrupt us later: timers, signal handlers, trace hooks."""
    for which in (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF):
        try:
            signal.setitimer(which, 0)
        except (OSError, ValueError):
            pass
    for signum in range(1, signal.NSIG):
        try:
            if callable(signal.getsignal(signum)):
                signal.signal(signum, signal.SIG_IGN)
        except (OSError, ValueError, RuntimeError):
            pass
    sys.settrace(None)
    sys.setprofile(None)


def reset_output(out_chars: int) -> tuple[Capped, Capped]:
    """Empty the stdout/stderr/status memfds and put fresh capped streams on them."""
    for fd in (1, 2, 3):
        _ftruncate(fd, 0)
        _lseek(fd, 0, 0)
    _pwrite(3, b'{"kind": "running"}', 0)  # from here on, an empty report means the code ended it
    out, err = Capped(1, out_chars, "replace"), Capped(2, 65_536, "backslashreplace")
    sys.stdout, sys.stderr = out, err
    return out, err


def run_block(req: dict[str, Any], module: types.ModuleType) -> int:
    """Run one block in ``module``'s namespace and write its status record (fd 3). Its exit code."""
    out, err = reset_output(int(req["out_chars"]))
    status: dict[str, Any] = {"kind": "ok"}
    exit_code, main_pid = 0, os.getpid()
    try:
        status, exit_code = execute(req, module)
    finally:
        if os.getpid() != main_pid:  # a fork the code made, finishing the code: no report
            _exit(exit_code & 0xFF)
        # Names the block rebound in builtins would break the report (json uses isinstance, ...).
        _BUILTINS_DICT.update(_BUILTINS)
        # A signal handler or timer the block left may fire while we report: disarm everything first.
        for _ in range(3):
            try:
                disarm()
                break
            except BaseException:
                continue
        for stream in (out, err):
            try:
                stream.flush()
            except BaseException:
                pass
        if out.dropped:
            status["tail"], status["dropped"] = out.tail, out.dropped
        try:
            _ftruncate(3, 0)
            _pwrite(3, _dumps(status).encode("utf-8", errors="replace"), 0)
        except BaseException:
            pass
    return exit_code


def compile_block(req: dict[str, Any]) -> types.CodeType | dict[str, Any]:
    """The block compiled (last value shown), or the status record of a syntax error or a refusal.

    If the display rewrite does not compile, the original code is compiled, so a bad block reports its
    own error; refusal looks at the compiled code (see :func:`refused_name`).
    """
    src = str(req["code"])
    code: types.CodeType | None = None
    if req.get("display"):
        found = last_statement_tree(src)
        if found is not None:
            try:
                code = compile(add_display(src, *found), CODE_NAME, "exec")
            except (SyntaxError, ValueError):
                code = None
    if code is None:
        try:
            code = compile(src, CODE_NAME, "exec")
        except (SyntaxError, ValueError) as exc:
            return {"kind": "exception", "error": format_error(exc), "syntax": True}
    name = refused_name(code, list(req.get("refuse", ())))
    if name is not None:
        return {"kind": "refused", "error": f"refused: code uses {name!r}"}
    linecache.cache[CODE_NAME] = (len(src), None, src.splitlines(True), CODE_NAME)  # tracebacks show it
    return code


def execute(req: dict[str, Any], module: types.ModuleType) -> tuple[dict[str, Any], int]:
    """Compile and run the code; (status record, exit code). Raises nothing."""
    try:
        code = compile_block(req)
        if isinstance(code, dict):
            return code, 1
        exec(code, module.__dict__)
        if req.get("once"):  # like the interpreter at exit: wait for non-daemon threads
            me = threading.current_thread()
            for thread in threading.enumerate():
                if thread is not me and not thread.daemon:
                    thread.join()
        return {"kind": "ok"}, 0
    except SystemExit as exc:
        code_: object = exc.code
        if code_ is None:
            return {"kind": "exit", "code": None}, 0
        if _isinstance(code_, int) and -2**31 <= cast(int, code_) < 2**31:
            return {"kind": "exit", "code": code_}, cast(int, code_) & 0xFF
        return {"kind": "exit", "code": short(str(code_))}, 1
    except BaseException as exc:
        try:
            disarm()
        except BaseException:
            pass
        memory = isinstance(exc, MemoryError)
        return {"kind": "exception", "memory": memory, "error": format_error(exc)}, 1


def block_fds(fds: dict[str, int]) -> None:
    """stdin /dev/null, stdout/stderr/status on 1/2/3, the control pipe on 4, done on 5; nothing else."""
    import fcntl  # noqa: PLC0415 - only the block needs it

    ctl, done = fcntl.fcntl(fds["ctl"], fcntl.F_DUPFD, 1000), fcntl.fcntl(fds["done"], fcntl.F_DUPFD, 1000)
    for fd, target in ((fds["out"], 1), (fds["err"], 2), (fds["status"], 3), (ctl, 4), (done, 5)):
        _dup2(fd, target)
    null = os.open(os.devnull, os.O_RDONLY)
    _dup2(null, 0)
    os.closerange(6, 1 << 20)  # close_range(2): one call, whatever the template had open
    fds.update(out=1, err=2, status=3, ctl=4, done=5)


def block_prepare(spare: dict[str, Any], fds: dict[str, int], features: dict[str, Any]) -> None:
    """Everything that does not depend on the code, done ahead of the request: namespaces, mounts,
    cgroup, session, file descriptors, identity. This process is pid 1 of its PID namespace."""
    init_setup(spare, features)
    os.setsid()
    block_fds(fds)
    work = str(spare["work"])
    uid = spare.get("uid") if features.get("uid") else None
    if uid is not None:
        os.chown(work, uid, uid)
    os.chdir(work)
    setlim(resource.RLIMIT_CORE, 0)
    if not drop_privileges(uid, CAP_DAC_READ_SEARCH if uid is not None else None) and features.get("uid"):
        _exit(71)  # never run a block with less than was promised
    setlim(resource.RLIMIT_NPROC, int(spare["nproc"]))
    # Changing credentials cleared the parent-death signal: set it again, and leave if it came too late.
    # (If the template died meanwhile, reading the control pipe ends this process.)
    libc().prctl(1, signal.SIGKILL, 0, 0, 0)
    set_name(SPARE_NAME)


def block_main(spare: dict[str, Any], fds: dict[str, int], features: dict[str, Any]) -> None:
    """The session's process: prepare, wait for the first request, then one block or a loop of them."""
    try:
        block_prepare(spare, fds, features)
    except BaseException as exc:
        try:
            text = _dumps({"kind": "setup", "error": f"sandbox: isolation setup failed: {exc}"})
            _write(fds["status"], text.encode())
        finally:
            _exit(72)
    reader = LineReader(fds["ctl"])
    req = reader.next()
    if req is None:
        _exit(0)
    set_name("python3")
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in dict(req["env"]).items()})
    os.environ["HOME"] = os.environ["TMPDIR"] = str(spare["work"])
    setlim(resource.RLIMIT_FSIZE, int(req["fsize"]))
    if req.get("once"):
        setlim(resource.RLIMIT_CPU, int(req["cpu"]), int(req["cpu"]) + 1)
    random.seed()
    np = sys.modules.get("numpy")
    if np is not None:
        try:
            np.random.seed()
        except Exception:
            pass
    block_loop(req, fds, reader)


def block_loop(req: dict[str, Any], fds: dict[str, int], reader: LineReader) -> None:
    """Run the first block, then (in a persistent session) each block the template sends."""
    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = module
    sys.argv = [CODE_NAME]
    sys.stdin = open(os.devnull)  # noqa: SIM115 - the block's stdin, open for its whole life
    if req.get("as_bytes"):
        setlim(resource.RLIMIT_AS, int(req["as_bytes"]))
    first: dict[str, Any] | None = req if req.get("code") is not None else None
    if first is None:
        _write(fds["done"], b"\n")  # ready: the session is open
    while True:
        block = first if first is not None else reader.next()
        first = None
        if block is None:
            _exit(0)
        rc = run_block(block, module)
        if req.get("once"):
            _exit(rc)
        try:
            _write(fds["done"], b"\n")
        except BaseException:
            _exit(70)


# ---------------------------------------------------------------------------------------- namespaces


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def read_only_tree() -> bool:
    """Make every mount of this mount namespace read-only (``mount_setattr``, Linux 5.12+). True if done.

    The block can then write nowhere but its private tmpfs (mounted afterwards), whatever other
    world-writable folder the machine has, and in a user namespace not the caller's own files.
    """
    attr = _MountAttr(1, 0, 0, 0)  # MOUNT_ATTR_RDONLY
    return libc().syscall(442, -100, b"/", 0x8000, ctypes.byref(attr), ctypes.sizeof(attr)) == 0  # AT_RECURSIVE


def private_mounts(tmp_bytes: int, proc: bool, readonly: bool) -> None:
    """Mount size-capped tmpfs over each shared writable place, and a /proc of this PID namespace."""
    c = libc()
    if c.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "make / private")
    if readonly and not read_only_tree():
        raise OSError(ctypes.get_errno(), "make the file system read-only")
    opts = f"size={tmp_bytes},mode=1777,nr_inodes=65536".encode()
    for d in SHARED_DIRS:
        if not os.path.isdir(d) or os.path.islink(d):
            continue
        kept = [(p, os.open(p, os.O_PATH | os.O_DIRECTORY)) for p in interpreter_dirs_under(d)]
        if c.mount(b"tmpfs", d.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts) != 0:
            raise OSError(ctypes.get_errno(), "mount tmpfs on " + d)
        for path, fd in kept:
            bind_back(path, fd)
    if proc and c.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV, None) != 0:
        raise OSError(ctypes.get_errno(), "mount /proc")


def interpreter_dirs_under(shared: str) -> list[str]:
    """The interpreter's own folders (its prefix, its ``sys.path``) that lie under ``shared``, outermost only.

    A virtual environment or checkout in ``/tmp`` would otherwise vanish under the block's private tmpfs,
    and a block's ``import sympy`` fail as if the package were not installed.
    """
    root = shared.rstrip("/") + "/"
    found = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, os.path.dirname(sys.executable), *sys.path)
             if p and os.path.isdir(p)}
    inside = sorted(p for p in found if p.startswith(root))
    return [p for i, p in enumerate(inside) if not any(p.startswith(q + "/") for q in inside[:i])]


def bind_back(path: str, fd: int) -> None:
    """Bind ``path`` (held open as ``fd`` from before the tmpfs hid it) back in, read-only."""
    c = libc()
    try:
        os.makedirs(path, exist_ok=True)
        if c.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None, MS_BIND | MS_REC, None) != 0:
            raise OSError(ctypes.get_errno(), "bind " + path)
        c.mount(None, path.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)  # best effort: ro already
    finally:
        os.close(fd)


def init_setup(req: dict[str, Any], features: dict[str, Any]) -> None:
    """The session's cgroup, then mount and IPC namespaces and the private mounts (the cgroup first:
    ``/sys`` is read-only afterwards). This process is pid 1 of a new PID namespace."""
    cgroup = req.get("cgroup")
    if cgroup:
        with open(str(cgroup) + "/cgroup.procs", "w") as f:
            f.write("0")
    if features.get("mount"):
        flags = CLONE_NEWNS | (CLONE_NEWIPC if features.get("ipc") else 0)
        if libc().unshare(flags) != 0:
            raise OSError(ctypes.get_errno(), "unshare mount/ipc")
        private_mounts(int(req["tmp_bytes"]), bool(features.get("pid")), bool(features.get("readonly")))


def tree_pss_bytes(root: int) -> int:
    """Proportional memory of ``root`` and all its descendants (host /proc; for polled memory limits)."""
    total, todo, seen = 0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            for line in read_text(f"/proc/{pid}/smaps_rollup").splitlines():
                if line.startswith(("Pss:", "SwapPss:")):
                    total += int(line.split()[1]) * 1024
            for tid in os.listdir(f"/proc/{pid}/task"):
                todo.extend(int(c) for c in read_text(f"/proc/{pid}/task/{tid}/children").split())
        except (OSError, ValueError, IndexError):
            continue
    return total


# ------------------------------------------------------------------------------------------ the template


class Session:
    """The template's view of one session: its process (pid 1 of its namespaces), pipes and memfds."""

    def __init__(self, spare: dict[str, Any], features: dict[str, Any], own_pidns: int) -> None:
        self.features, self.cgroup, self.work = features, spare.get("cgroup"), str(spare["work"])
        self.uid = spare.get("uid") if features.get("uid") else None
        self.poll_memory, self.over = int(spare.get("poll_memory") or 0), False
        self.out, self.err, self.status = (os.memfd_create(n, 0) for n in ("out", "err", "status"))
        ctl_r, self.ctl_w = os.pipe()
        self.done_r, done_w = os.pipe()
        fds = {"out": self.out, "err": self.err, "status": self.status, "ctl": ctl_r, "done": done_w}
        if features.get("pid"):
            libc().setns(own_pidns, CLONE_NEWPID)
            if libc().unshare(CLONE_NEWPID) != 0:
                raise OSError(ctypes.get_errno(), "unshare pid")
        try:
            self.pid = os.fork()
        finally:
            if features.get("pid"):
                libc().setns(own_pidns, CLONE_NEWPID)  # later forks of the template: its own namespace
        if self.pid == 0:
            try:
                libc().prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the template
                block_main(spare, fds, features)
            finally:
                _exit(70)
        for fd in (ctl_r, done_w):
            os.close(fd)
        self.pidfd = os.pidfd_open(self.pid)
        self.oom_before = cgroup_oom_kills(self.cgroup) if self.cgroup else 0
        self.alive = True

    def wait(self, timeout: float, once: bool) -> str:
        """'done' (block finished, session alive), 'exited' (its process ended) or 'timeout'."""
        deadline = time.monotonic() + timeout
        watch = [self.pidfd] if once else [self.pidfd, self.done_r]
        while True:
            left = deadline - time.monotonic()
            step = min(left, 0.05) if self.poll_memory else left
            ready, _, _ = select.select(watch, [], [], max(0.0, step))
            if self.done_r in ready and not once:
                if os.read(self.done_r, 4096):
                    return "done"
                watch = [self.pidfd]  # the block closed its end: it is ending
            elif self.pidfd in ready:
                return "exited"
            elif left <= 0:
                return "timeout"
            elif self.poll_memory and tree_pss_bytes(self.pid) > self.poll_memory:
                self.over = True
                os.kill(self.pid, signal.SIGKILL)  # pid 1: the whole namespace goes with it

    def outputs(self, out_chars: int) -> dict[str, Any]:
        """What the block wrote (bounded reads of the memfds)."""
        out = _pread(self.out, 4 * out_chars, 0)
        status_raw = _pread(self.status, 4 * out_chars + 2 * ERROR_CHARS + 65_536, 0)
        try:
            status = _loads(status_raw.decode("utf-8", errors="replace")) if status_raw else None
        except ValueError:
            status = {"kind": "garbled"}
        if not isinstance(status, dict):
            status = {"kind": "garbled"} if status is not None else None
        return {"stdout": out.decode("utf-8", errors="replace"), "stdout_bytes": _fstat(self.out).st_size,
                "stderr": _pread(self.err, 4 * 65_536, 0).decode("utf-8", errors="replace"), "status": status}

    def finish(self, dying: list[int]) -> dict[str, Any]:
        """Kill the session's process (and so its namespace), reap it; how it ended.

        Killing pid 1 makes the kernel kill everything else in the namespace (no new process can be
        made there any more); a fork bomb takes a while to die on a loaded machine, so after
        ``KILL_WAIT_S`` the reply goes out and the process is reaped later (``dying``).
        """
        self.alive = False
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass
        if not select.select([self.pidfd], [], [], KILL_WAIT_S)[0]:
            if not self.features.get("pid"):
                sweep_group(self.pid, self.uid, self.cgroup)
            dying.append(self.pid)
            for fd in (self.out, self.err, self.status, self.ctl_w, self.done_r, self.pidfd):
                _close(fd)
            return {"killed": True, "over": self.over}
        _, wstatus, usage = os.wait4(self.pid, 0)
        if not self.features.get("pid"):
            sweep_group(self.pid, self.uid, self.cgroup)
        for fd in (self.out, self.err, self.status, self.ctl_w, self.done_r, self.pidfd):
            _close(fd)
        report: dict[str, Any] = {"wstatus": wstatus, "maxrss_kb": usage.ru_maxrss, "over": self.over,
                                  "cpu_s": usage.ru_utime + usage.ru_stime}
        if self.cgroup:
            report["oom_kills"] = cgroup_oom_kills(self.cgroup) - self.oom_before
        return report


def proc_ids(pid: int) -> tuple[str, int, int, int] | None:
    """(state, session id, process group, real uid) of a process, from /proc (not its folder's owner:
    after a credential change a process is not dumpable and its /proc folder belongs to root)."""
    try:
        fields = dict(line.split(":", 1) for line in read_text(f"/proc/{pid}/status").splitlines() if ":" in line)
        return (fields["State"].split()[0], int(fields["NSsid"].split()[0]), int(fields["NSpgid"].split()[0]),
                int(fields["Uid"].split()[0]))
    except (OSError, KeyError, ValueError, IndexError):
        return None


def sweep_targets(sid: int, uid: int | None, cgroup: str | None) -> list[int]:
    """Live processes in session ``sid``, with real uid ``uid``, or in ``cgroup``."""
    me, found = os.getpid(), set[int]()
    if cgroup:
        try:
            found.update(int(p) for p in read_text(cgroup + "/cgroup.procs").split())
        except (OSError, ValueError):
            pass
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        ids = proc_ids(int(name))
        if ids is not None and ids[0] not in ("Z", "X") and (sid in (ids[1], ids[2]) or ids[3] == uid):
            found.add(int(name))
    found.discard(me)
    return sorted(found)


def sweep_group(sid: int, uid: int | None, cgroup: str | None = None) -> None:
    """Without a PID namespace: kill what is left of the block (its session, its uid, its cgroup).

    A process caught inside ``fork()`` may produce a child after a scan, so the sweep ends only after
    two empty scans in a row.
    """
    deadline = time.monotonic() + 0.5
    empty = 0
    while time.monotonic() < deadline and empty < 2:
        found = sweep_targets(sid, uid, cgroup)
        empty = 0 if found else empty + 1
        for other in found:
            try:
                os.kill(other, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.002)


def remove_owned(uid: int) -> None:
    """Without a mount/IPC namespace: delete what ``uid`` left in the shared writable places and its
    SysV IPC objects (a block's private uid owns everything it created)."""
    import shutil  # noqa: PLC0415 - only cleaners need it

    for d in SHARED_DIRS:
        try:
            with os.scandir(d) as entries:
                mine = [e.path for e in entries if e.stat(follow_symlinks=False).st_uid == uid]
        except OSError:
            continue
        for path in mine:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass
    for kind, call in (("shm", "shmctl"), ("msg", "msgctl"), ("sem", "semctl")):
        try:
            lines = read_text(f"/proc/sysvipc/{kind}").splitlines()
        except OSError:
            continue
        cols = lines[0].split() if lines else []
        for line in lines[1:]:
            row = dict(zip(cols, line.split(), strict=False))
            ident = row.get("shmid") or row.get("msqid") or row.get("semid")
            if ident is not None and row.get("uid") == str(uid):
                getattr(libc(), call)(int(ident), 0, 0)  # IPC_RMID


def remove_in_background(path: str | None, uid: int | None) -> int:
    """Delete a folder (a block may have left any number of files in it) and, given ``uid``, what that
    uid owns in the shared places, in a forked process; its pid."""
    pid = os.fork()
    if pid == 0:
        try:
            import shutil  # noqa: PLC0415

            if path is not None:
                shutil.rmtree(path, ignore_errors=True)
            if uid is not None:
                remove_owned(uid)
        finally:
            _exit(0)
    return pid


def write_bounded(fd: int, data: bytes, deadline: float) -> bool:
    """Write all of ``data`` to a non-blocking pipe before ``deadline``; False if the reader stalls."""
    while data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([], [fd], [], left)[1]:
            return False
        try:
            data = data[_write(fd, data):]
        except BlockingIOError:
            continue
        except OSError:
            return False
    return True


def trial(features: dict[str, Any], tmp_bytes: int) -> bool:
    """Can a session be set up with ``features`` here? Runs the real init setup in a throwaway child."""
    own = os.open("/proc/self/ns/pid", os.O_RDONLY)
    try:
        if features.get("pid"):
            libc().setns(own, CLONE_NEWPID)
            if libc().unshare(CLONE_NEWPID) != 0:
                return False
        pid = os.fork()
        if pid == 0:
            try:
                init_setup({"tmp_bytes": tmp_bytes}, features)
                if features.get("uid") and not drop_privileges(features["uid"], CAP_DAC_READ_SEARCH):
                    _exit(3)
                _exit(0)
            finally:
                _exit(4)
        libc().setns(own, CLONE_NEWPID)
        return os.waitpid(pid, 0)[1] == 0
    finally:
        os.close(own)


def enter_userns() -> bool:
    """As an unprivileged user: become root of a new user namespace (so the others may be created)."""
    uid, gid = os.getuid(), os.getgid()
    if libc().unshare(CLONE_NEWUSER) != 0:
        return False
    try:
        for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"0 {uid} 1"),
                           ("/proc/self/gid_map", f"0 {gid} 1")):
            with open(path, "w") as f:
                f.write(text)
    except OSError:
        return False
    return True


def become_pid1() -> None:
    """Continue as pid 1 of a PID namespace owned by our user namespace (the caller keeps our pid).

    Only then may the template go back (``setns``) to its own PID namespace after making each session's;
    the initial namespace belongs to a user namespace where we hold no capability.
    """
    if libc().unshare(CLONE_NEWPID) != 0:
        return
    child = os.fork()
    if child == 0:
        libc().prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the process the caller knows
        return
    os.closerange(3, 1 << 20)  # the pipes are the child's now
    _, status = os.waitpid(child, 0)
    _exit(os.waitstatus_to_exitcode(status) & 0xFF)


def probe(off: list[str], tmp_bytes: int, uid_probe: int) -> dict[str, Any]:
    """The strongest combination of isolation features this kernel allows (``off``: not to be used)."""
    root = os.geteuid() == 0
    feats: dict[str, Any] = {"root": root, "userns": False}
    if not root and "userns" not in off:
        feats["userns"] = enter_userns()
        if feats["userns"]:
            become_pid1()
    can_ns = root or feats["userns"]
    feats["net"] = can_ns and "net" not in off and libc().unshare(CLONE_NEWNET) == 0
    feats["uid"] = uid_probe if root and "uid" not in off and trial({"uid": uid_probe}, tmp_bytes) else None
    for pid, mount, ipc in ((1, 1, 1), (1, 1, 0), (0, 1, 1), (0, 1, 0), (1, 0, 0)):
        want = {"pid": bool(pid), "mount": bool(mount), "ipc": bool(ipc)}
        if any(want[k] and k in off for k in want):
            continue
        if can_ns and "namespaces" not in off and trial(want, tmp_bytes):
            feats.update(want)
            feats["readonly"] = bool(mount) and "readonly" not in off and trial({**want, "readonly": True}, tmp_bytes)
            break
    else:
        feats.update(pid=False, mount=False, ipc=False, readonly=False)
    base = cgroup_base() if (root and "cgroup" not in off) else None
    feats["cgroup"] = None
    if base is not None:
        path = cgroup_create(base, f"aimo-probe-{os.getpid()}", 1 << 30)
        if path is not None:
            feats["cgroup"] = list(base)
            cgroup_remove(path)
    feats["uid"] = bool(feats["uid"])
    return feats


class Template:
    """The template's request loop: sessions by id, a spare session set up ahead, cgroups to remove.

    The namespaces, mounts and cgroup of a session cost milliseconds (moving a process into a v1 cgroup
    waits for an RCU grace period), so after each reply the template prepares the next session's init
    while the caller is busy elsewhere; a request then only hands it the code.
    """

    def __init__(self, boot: dict[str, Any], features: dict[str, Any], ctl_out: int) -> None:
        self.boot, self.features, self.ctl_out = boot, features, ctl_out
        self.sessions: dict[str, Session] = {}
        self.stale: list[str] = []  # cgroups to remove (after their processes are gone)
        self.seq = 0
        self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY)
        self.spare: tuple[tuple[int, int], Session] | None = None
        self.last_key: tuple[int, int] | None = None
        self.dying: list[int] = []  # killed session processes not reaped yet

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op, sid = req.get("op"), str(req.get("sid", ""))
        if op == "open":
            return self.open(sid, req)
        session = self.sessions.get(sid)
        if session is None:
            return {"state": "error", "error": "sandbox: no such session"}
        if op == "exec":
            data = (_dumps(req) + "\n").encode("utf-8", errors="replace")
            sent = write_bounded(session.ctl_w, data, time.monotonic() + float(req["timeout"]))
            return self.collect(sid, session, req, "timeout" if not sent else None)
        self.end(sid, session)
        return {"state": "closed"}

    def new_session(self, key: tuple[int, int]) -> Session:
        """Fork a session process with its namespaces, mounts and cgroup; it waits for its first request."""
        self.seq += 1
        spare: dict[str, Any] = {"mem_bytes": key[0], "tmp_bytes": key[1], "cgroup": None, "poll_memory": 0,
                                 "uid": int(self.boot["uid_base"]) + ((os.getpid() % 2**20) << 10) + self.seq % 1024,
                                 "nproc": int(self.boot.get("nproc", 128)), "work": "/tmp"}
        if not self.features.get("mount"):  # no private /tmp: a folder of its own, deleted afterwards
            spare["work"] = tempfile.mkdtemp(prefix="block-", dir=str(self.boot.get("home") or None))
        if self.features.get("cgroup"):
            base = tuple(self.features["cgroup"])
            name = f"aimo-{os.getpid()}-{self.seq}"
            # a second try under another name: a folder of the same name may still be on its way out
            spare["cgroup"] = cgroup_create(base, name, key[0]) or cgroup_create(base, name + "-b", key[0])
            if spare["cgroup"] is None:
                raise OSError("could not create the block's memory cgroup")
        elif self.features.get("pid") and self.features.get("mount"):
            spare["poll_memory"] = key[0]
        try:
            session = Session(spare, self.features, self.own_pidns)
        except OSError:
            if spare["cgroup"]:
                cgroup_remove(spare["cgroup"])
            raise
        os.set_blocking(session.ctl_w, False)
        return session

    def take(self, key: tuple[int, int]) -> Session:
        """The spare session if it fits and is alive, else a new one."""
        spare, self.spare = self.spare, None
        if spare is not None:
            if spare[0] == key and not select.select([spare[1].pidfd], [], [], 0)[0]:
                return spare[1]
            self.discard(spare[1])
        return self.new_session(key)

    def refill(self) -> None:
        """After a reply: remove finished cgroups and prepare the next session."""
        self.stale = [p for p in self.stale if not cgroup_remove(p)]
        self.reap()
        if self.spare is None and self.last_key is not None:
            try:
                self.spare = (self.last_key, self.new_session(self.last_key))
            except OSError:
                self.spare = None

    def open(self, sid: str, req: dict[str, Any]) -> dict[str, Any]:
        if sid in self.sessions:
            self.end(sid, self.sessions[sid])
        key = (int(req["mem_bytes"]), int(req["tmp_bytes"]))
        self.last_key = key
        try:
            session = self.take(key)
        except OSError as exc:
            return {"state": "error", "error": f"sandbox: could not start the block: {exc}"}
        self.sessions[sid] = session
        data = (_dumps(req) + "\n").encode("utf-8", errors="replace")
        if not write_bounded(session.ctl_w, data, time.monotonic() + max(1.0, float(req["timeout"]))):
            dead = bool(select.select([session.pidfd], [], [], 0.5)[0])
            return self.collect(sid, session, req, "exited" if dead else "timeout")
        if req.get("code") is not None:
            return self.collect(sid, session, req, None)
        if session.wait(5.0, once=False) == "done":
            return {"state": "open"}
        report = self.end(sid, session)
        return {"state": "error", "error": str(report.get("error", "sandbox: the session did not start"))}

    def collect(self, sid: str, session: Session, req: dict[str, Any], state: str | None) -> dict[str, Any]:
        """Wait for the block, read what it wrote; end the session when it is over or over time."""
        once = bool(req.get("once"))
        if state is None:
            state = session.wait(float(req["timeout"]), once)
        reply: dict[str, Any] = {"state": state, **session.outputs(int(req["out_chars"]))}
        if once or state != "done":
            reply["report"] = self.end(sid, session)
        return reply

    def end(self, sid: str, session: Session) -> dict[str, Any]:
        self.sessions.pop(sid, None)
        return self.discard(session)

    def discard(self, session: Session) -> dict[str, Any]:
        report = session.finish(self.dying) if session.alive else {}
        if session.cgroup:
            self.stale.append(session.cgroup)
        if not (self.features.get("mount") and self.features.get("ipc")):  # (reaped by reap())
            remove_in_background(None if session.work == "/tmp" else session.work, session.uid)
        return report

    def reap(self) -> None:
        """Reap dying sessions, finished cleaners and orphans (never a live session's process)."""
        for pid in list(self.dying):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    self.dying.remove(pid)
            except ChildProcessError:
                self.dying.remove(pid)
        mine = {s.pid for s in self.sessions.values()} | ({self.spare[1].pid} if self.spare else set())
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid in mine:
                return
            os.waitpid(info.si_pid, 0)


def warm_up() -> None:
    """First calls load lazily (numpy's seeding, sympy's solvers): pay for them once, in the template."""
    try:
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


def main(argv: list[str]) -> None:
    """Template entry point: preload, probe, say ready, serve requests until stdin closes."""
    boot = _loads(argv[1])
    libc().prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the caller
    ctl_in, ctl_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    _dup2(null, 0)
    _dup2(null, 1)
    t0 = time.monotonic()
    failed = {}
    for name in boot["preload"]:
        try:
            __import__(name)
        except BaseException as exc:  # a missing optional module must not stop the pool
            failed[name] = f"{type(exc).__name__}: {exc}"
    warm_up()
    gc.collect()
    gc.freeze()  # the children's collections then never touch (and copy) the template's objects
    libc().prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans of non-namespaced blocks come here
    features = probe(list(boot.get("off", ())), int(boot["tmp_bytes"]), int(boot["uid_base"]))
    send_line(ctl_out, {"ready": True, "pid": os.getpid(), "failed": failed, "features": features,
                        "seconds": time.monotonic() - t0, "at": time.monotonic()})
    template = Template(boot, features, ctl_out)
    reader = LineReader(ctl_in)
    while True:
        req = reader.next()
        if req is None:
            _exit(0)
        try:
            reply = template.handle(req)
        except Exception as exc:  # a bad request must not take the template down
            reply = {"state": "error", "error": f"sandbox: {type(exc).__name__}: {exc}"}
        send_line(ctl_out, reply)
        template.refill()


if __name__ == "__main__":
    main(sys.argv)
