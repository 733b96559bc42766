"""The command line, through its exit code and output (real subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aimo_kernel", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def test_version():
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("aimo-kernel 0.")


def test_config_prints_the_resolved_toml():
    out = cli("config", "--preset", "aimo1-t4x2", "--set", "tir.num_candidates=12")
    assert out.returncode == 0
    assert 'preset = "aimo1-t4x2"' in out.stdout and "num_candidates = 12" in out.stdout
    assert 'attention_backend = "TRITON_ATTN"' in out.stdout


def one_line_error(out: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    assert out.returncode == code, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aimo-kernel: error: ") and fragment in lines[0], out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (("config", "--set", "sampling.temperature=5"), 2, "SamplingConfig.temperature must be in [0, 2], got 5"),
        (("config", "--preset", "aimo9"), 2, "unknown preset 'aimo9'"),
        (("config", "--set", "tir.bogus=1"), 2, "unknown key(s) ['bogus'] in [tir]"),
        (("dry-run", "--problems", "/nonexistent.csv"), 1, "problems file not found"),
        (("solve", "1+1?", "--set", "engine.model=/no/such/model"), 1, "model folder /no/such/model not found"),
        (("bundle", "--target", "nope"), 1, "unknown target 'nope'; known targets: kaggle-t4"),
        (("quantize", "/no/src", "/tmp/dst", "--calibration", "/no.csv"), 1, "source model folder not found"),
    ],
)
def test_errors_are_one_clean_line(args, code, fragment):
    one_line_error(cli(*args), code, fragment)


def test_csv_without_needed_columns(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\nx,1\n")
    one_line_error(cli("dry-run", "--problems", str(bad)), 1, "missing column(s) id, problem")


def test_empty_csv(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    one_line_error(cli("dry-run", "--problems", str(empty)), 1, "empty file")


def test_missing_model_in_a_dry_run_still_answers_every_problem(tmp_path):
    # Inside a competition run a broken engine must not lose the answers: each problem gets the fallback.
    out = cli("dry-run", "--no-progress", "--out", str(tmp_path), "--set", "engine.model=/no/such/model")
    assert out.returncode == 0, out.stderr
    assert "accuracy: 0/10" in out.stdout
    import polars as pl

    sub = pl.read_parquet(tmp_path / "submission.parquet")
    assert sub.height == 10 and set(sub["answer"]) == {0}
