"""The sandbox's pieces: rendering, classification, the worker's code handling, configuration, and the
fresh-interpreter sandbox (same worker code as the pool, so the same isolation) on a few hostile blocks."""

from __future__ import annotations

import os
import signal
import time
import types
from pathlib import Path

import pytest

from aimo_kernel.config import ConfigError, SandboxConfig
from aimo_kernel.sandbox import (
    TRUNCATION_MARKER,
    ExecutionResult,
    SubprocessSandbox,
    describe_isolation,
    isolation_level,
    make_sandbox,
    prepare_code,
    worker,
)
from aimo_kernel.sandbox.result import MIDDLE_MARKER, classify, error_summary

CFG = SandboxConfig(timeout_s=1.0, max_output_chars=100, memory_mb=256)


def reply(state: str = "exited", wstatus: int = 0, status: dict[str, object] | None = None, **report: object):
    return {"state": state, "stdout": "", "stdout_bytes": 0, "stderr": "", "status": status,
            "report": {"wstatus": wstatus, "maxrss_kb": 1000, "cpu_s": 0.01, **report}}


# ---------------------------------------------------------------------------------------------- render


@pytest.mark.parametrize(("result", "width", "shown"), [
    (ExecutionResult(stdout="42\n", exit_code=0), 100, "42"),
    (ExecutionResult(stdout="partial\n", exit_code=1, error="Traceback...\nValueError: bad"), 100, "ValueError: bad"),
    (ExecutionResult(error='  File "<code>", line 1\n    x = (\n        ^\nSyntaxError: \'(\' was never closed',
                     exit_code=1), 100, "SyntaxError: '(' was never closed"),
    (ExecutionResult(stdout="a" * 10, exit_code=0, output_truncated=True), 100, "a" * 10 + TRUNCATION_MARKER),
    (ExecutionResult(stdout="head", stdout_tail="tail", exit_code=0, output_truncated=True), 100,
     "head" + MIDDLE_MARKER + "tail"),
    (ExecutionResult(stdout="x", exit_code=0, notice="[restarted]"), 100, "[restarted]\nx"),
    (ExecutionResult(error="", exit_code=1, crashed=True), 100, "Error: the code failed"),
])
def test_render(result, width, shown):
    assert result.render(width) == shown


def test_render_cuts_the_middle_and_validates_width():
    text = ExecutionResult(stdout="A" * 300 + "END", exit_code=0).render(100)
    assert text.startswith("A" * 50) and text.endswith("END") and MIDDLE_MARKER in text
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError):
            ExecutionResult().render(bad)  # type: ignore[arg-type]


def test_error_summary_is_the_last_line():
    assert error_summary("Traceback\n  File x\nKeyError: 3\n\n") == "KeyError: 3"
    assert error_summary("") == "Error: the code failed"


# ---------------------------------------------------------------------------------------- code handling


@pytest.mark.parametrize(("code", "expected"), [
    ("x = 1\nx + 1", "x = 1\nprint(_) if (_ := (x + 1)) is not None else None"),
    ("print(1)", "print(1)"),
    ("x = 1", "x = 1"),
    ("1, 2", "print(_) if (_ := (1, 2)) is not None else None"),
    ("f(\n  1)", "print(_) if (_ := (f(\n  1))) is not None else None"),
    ("x = (", "x = ("),
])
def test_prepare_code(code, expected):
    assert prepare_code(code, print_last_expression=True) == expected
    assert prepare_code(code, print_last_expression=False) == code


@pytest.mark.parametrize(("code", "refused"), [
    ("import subprocess", "subprocess"),
    ("from subprocess import run", "subprocess"),
    ("import os\nos.subprocess = 1", "subprocess"),
    ("__import__('subprocess')", "subprocess"),
    ("import importlib\nimportlib.import_module('venv.x')", "venv"),
    ("# subprocess is not used\nprint('we avoid subprocess')", None),
    ('"""Uses no venv."""\nx = 1', None),
    ("def f():\n    import subprocess\n    return 1", "subprocess"),
])
def test_refusal_uses_the_compiled_code(code, refused):
    assert worker.refused_name(compile(code, "<code>", "exec"), ["subprocess", "venv"]) == refused


def test_large_code_finds_its_last_statement_from_the_tail():
    code = "x = 1\n" * 50_000 + "def f():\n    return x\n\nf() + 1"
    start = time.monotonic()
    found = worker.last_statement_tree(code)
    assert found is not None and time.monotonic() - start < 0.5
    shown = worker.add_display(code, *found)
    assert shown.endswith("print(_) if (_ := (f() + 1)) is not None else None")
    assert worker.last_statement_tree("x = 1\n" * 50_000 + "s = '''\na\n'''") is not None


def test_format_error_bounds_huge_messages_and_keeps_frames():
    try:
        exec(compile("def f():\n    raise ValueError('x' * 10_000_000)\nf()", worker.CODE_NAME, "exec"), {})
    except ValueError as exc:
        text = worker.format_error(exc)
    assert len(text) < 20_000 and 'File "<code>", line 2, in f' in text
    assert text.splitlines()[-1].startswith("ValueError: xxx") and "characters cut" in text


def test_capped_stream_keeps_head_and_tail(tmp_path):
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT)
    stream = worker.Capped(fd, 10, "replace")
    for i in range(100):
        stream.write(f"{i}\n")
    stream.flush()
    assert (tmp_path / "out").read_text() == "0\n1\n2\n3\n4\n"
    assert stream.tail.endswith("99\n") and len(stream.tail) == 10 and stream.dropped > 0
    with pytest.raises(TypeError):
        stream.write(b"bytes")  # type: ignore[arg-type]
    os.close(fd)


# ---------------------------------------------------------------------------------------- classification


@pytest.mark.parametrize(("rep", "flag", "text"), [
    (reply(status={"kind": "ok"}), None, ""),
    (reply(status=None), "crashed", "before the code ran"),
    (reply(status={"kind": "running"}, wstatus=0), None, ""),  # os._exit(0) in the code
    (reply(status={"kind": "garbled"}), None, ""),
    (reply(status={"kind": "setup", "error": "sandbox: isolation setup failed: x"}, wstatus=72 << 8), "crashed",
     "isolation setup failed"),
    (reply(status={"kind": "refused", "error": "refused: code uses 'venv'"}, wstatus=1 << 8), "refused", "venv"),
    (reply(status={"kind": "exception", "error": "MemoryError"}, wstatus=1 << 8), "memory_exceeded", "MemoryError"),
    (reply(status={"kind": "exit", "code": 3}, wstatus=3 << 8), None, "SystemExit: 3"),
    (reply(wstatus=signal.SIGXCPU, status={"kind": "running"}, cpu_s=0.01), "crashed", "SIGXCPU"),
    (reply(wstatus=signal.SIGXCPU, status={"kind": "running"}, cpu_s=2.0), "timed_out", "CPU time"),
    (reply(wstatus=signal.SIGKILL, status={"kind": "running"}, oom_kills=1), "memory_exceeded", "MB"),
    (reply(wstatus=signal.SIGSEGV, status={"kind": "running"}), "crashed", "SIGSEGV"),
    (reply(state="timeout", status={"kind": "running"}), "timed_out", "longer than 1 s"),
    (reply(state="timeout", status={"kind": "running"}, over=True), "timed_out", "longer"),
    ({"state": "error", "error": "sandbox: no such session"}, "crashed", "no such session"),
])
def test_classify(rep, flag, text):
    result = classify(CFG, rep, 1.0, 2)
    raised = {f for f in ("timed_out", "memory_exceeded", "crashed", "refused") if getattr(result, f)}
    assert raised == ({flag} if flag else set()) or (flag == "timed_out" and "timed_out" in raised), result
    assert text in result.error
    assert (flag is None and not text) == result.completed


def test_classify_keeps_output_head_and_tail():
    rep = reply(status={"kind": "ok", "tail": "END", "dropped": 5})
    rep["stdout"] = "h" * 101
    result = classify(CFG, rep, 1.0, 2)
    assert result.output_truncated and result.stdout == "h" * 100 and result.stdout_tail == "END"


# ------------------------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("bad", [{"session": "jupyter"}, {"tmp_mb": 0}, {"min_isolation": "max"},
                                 {"isolation_off": ("seccomp",)}])
def test_config_rejects(bad):
    with pytest.raises(ConfigError):
        SandboxConfig(**bad)  # type: ignore[arg-type]


def test_isolation_levels_are_named():
    full = {"pid": True, "mount": True, "ipc": True, "net": True, "uid": True, "cgroup": ["v1", "/x"]}
    assert isolation_level(full) == "full"
    assert isolation_level({**full, "cgroup": None}) == "namespaces"
    assert isolation_level({**full, "pid": False}) == "minimal"
    assert "cgroup v1 memory" in describe_isolation(full)
    assert "polled memory" in describe_isolation({**full, "cgroup": None})


def test_make_sandbox_rejects_other_configs():
    with pytest.raises(TypeError):
        make_sandbox(object())  # type: ignore[arg-type]


# -------------------------------------------------------------------------------- the subprocess sandbox


@pytest.fixture(scope="module")
def sub():
    sb = SubprocessSandbox(SandboxConfig(timeout_s=2.0, preload=(), memory_mb=256))
    yield sb
    sb.close()


def test_subprocess_sandbox_runs_and_is_isolated(sub, tmp_path):
    os.environ["AIMO_SECRET_TOKEN"] = "x"
    marker = tmp_path / "keep"
    marker.write_text("mine")
    r = sub.run(f"import os\nprint(sorted(k for k in os.environ if 'SECRET' in k), os.path.exists({str(marker)!r}))")
    assert r.ok and r.stdout == "[] False\n"  # no secrets; the caller's /tmp is not even visible
    r = sub.run("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(1, 9)\nprint('after')")
    assert r.stdout == "after\n" and marker.read_text() == "mine"


def test_subprocess_sandbox_bounds_time_and_cleans_up(sub):
    start = time.monotonic()
    r = sub.run("import os, time\nprint(os.getuid(), flush=True)\nif os.fork() == 0:\n    os.setsid()\n"
                "    time.sleep(60)\nwhile True: pass", timeout_s=1.0)
    assert r.timed_out and time.monotonic() - start < 2.0 + 2.0  # start-up of a fresh interpreter included
    uid = int(r.stdout)
    time.sleep(0.3)
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _uid_of(int(p)) == uid]


def _uid_of(pid: int) -> int | None:
    ids = worker.proc_ids(pid)
    return ids[3] if ids is not None and ids[0] not in ("Z", "X") else None


def test_subprocess_sandbox_close_and_bad_arguments(sub):
    with pytest.raises(TypeError):
        sub.run(b"print(1)")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        sub.run_many("print(1)")
    sb = SubprocessSandbox(SandboxConfig(preload=()))
    sb.close()
    with pytest.raises(RuntimeError):
        sb.run("print(1)")


def test_worker_module_is_importable_and_standalone():
    assert isinstance(worker, types.ModuleType)
    source = Path(worker.__file__).read_text()
    assert "from aimo_kernel" not in source and "import aimo_kernel" not in source


@pytest.mark.parametrize("kind", ["pool", "subprocess"])
def test_an_interpreter_installed_under_tmp_still_finds_its_packages(tmp_path, kind):
    """A virtual environment (or checkout) in /tmp must not vanish under the block's private /tmp."""
    import subprocess as sp
    import sys as _sys
    import sysconfig

    venv = tmp_path / "venv"  # pytest's tmp_path lies under /tmp
    sp.run([_sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = sp.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    assert purelib.startswith("/tmp/") and sysconfig.get_paths()["purelib"] != purelib
    (Path(purelib) / "installed_here.py").write_text("VALUE = 42\n")
    sandbox = make_sandbox(SandboxConfig(kind=kind, python=str(python), preload=("math",), workers=1))
    try:
        res = sandbox.run("import installed_here\nprint(installed_here.VALUE)", timeout_s=20)
        again = sandbox.run("open('/tmp/scratch', 'w').write('x')\nprint(open('/tmp/scratch').read())", timeout_s=20)
    finally:
        sandbox.close()
    assert res.ok and res.stdout.strip() == "42", res
    assert again.ok and again.stdout.strip() == "x", again  # the private /tmp still works beside the bound folder
    assert not (tmp_path / "scratch").exists()
