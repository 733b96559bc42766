"""Quiet output: without -v, what the engine stack writes to stderr goes to a log file, not the terminal, and
model code's SyntaxWarnings are never shown. Run in a fresh interpreter, as the CLI runs (pytest's own
capture of logging and warnings would hide what this checks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = r'''
import logging, subprocess, sys, warnings
from pathlib import Path
from aimo_kernel.cli.output import engine_output
import aimo_kernel.run.runner  # installs the filter for model code's SyntaxWarnings

with engine_output(VERBOSE, Path(sys.argv[1])) as terminal:
    warnings.warn("torch.distributed.reduce_op is deprecated", FutureWarning, stacklevel=1)
    noisy = logging.getLogger("torchao.test")
    noisy.addHandler(logging.StreamHandler(sys.stderr))  # a library's handler, made while the block runs
    noisy.propagate = False
    noisy.warning("Failed to load _C_mxfp8.so")
    logging.getLogger("aimo_kernel.sandbox").warning("sandbox isolation: partial")
    print("W1201 torch/utils/_pytree.py:630] register_constant() is deprecated", file=sys.stderr)
    subprocess.run([sys.executable, "-c", "import sys; print('child process warning', file=sys.stderr)"])
    compile("x = 1\nprint(x is 1)\n", "<code>", "exec")  # model code, as the sandbox compiles it
    compile("y = 2\nprint(y is 2)\n", "<unknown>", "exec")  # as ast.parse names it
    print("problems: 100%", file=terminal or sys.stderr)
print("after", file=sys.stderr)
'''
NOISE = ("reduce_op is deprecated", "Failed to load _C_mxfp8.so", "register_constant", "child process warning",
         "sandbox isolation")


def run_script(tmp_path: Path, verbose: bool) -> tuple[str, Path]:
    log = tmp_path / "engine.log"
    proc = subprocess.run([sys.executable, "-c", SCRIPT.replace("VERBOSE", str(verbose)), str(log)],
                          capture_output=True, text=True, timeout=120, check=True)
    return proc.stderr, log


def test_without_verbose_only_the_progress_bar_reaches_stderr(tmp_path):
    err, log = run_script(tmp_path, verbose=False)
    assert err == "problems: 100%\nafter\n"
    text = log.read_text()
    assert all(noise in text for noise in NOISE), text
    assert "SyntaxWarning" not in text  # model code's warnings are nobody's to show


def test_verbose_redirects_nothing_but_still_hides_model_syntax_warnings(tmp_path):
    err, log = run_script(tmp_path, verbose=True)
    assert all(noise in err for noise in NOISE) and not log.exists()
    assert "SyntaxWarning" not in err
