"""The plain-transformers backend (``transformers``) on CPU with the ``cpu`` preset's model.

One engine for the module. Covers the protocol (``Engine``, chat template, token counts, context
length), greedy agreement with ``vllm-offline`` on fixed prompts (text, token count and finish reason;
the only test here that loads vLLM, marked ``vllm``), stop strings kept, ``max_tokens``, the deadline,
seeded sampling and top-p, batching against one prompt at a time, refused requests, and the
``dry-run`` command end to end on this backend.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from aimo_kernel.config.presets import get_preset
from aimo_kernel.engine import AsyncEngine, Engine, GenerationRequest, SamplingParams, get_engine
from aimo_kernel.engine.hf_backend import stop_end
from aimo_kernel.solve.dialect import STOP

ROOT = Path(__file__).resolve().parents[1]
_CPU = get_preset("cpu")
# whatever model the cpu preset runs, in float32 on both backends so greedy decoding can agree exactly
CONFIG = dataclasses.replace(_CPU, engine=dataclasses.replace(_CPU.engine, dtype="float32"))
PROBLEMS = (
    "What is $1+1$?",
    "Find the remainder when $2^{10}$ is divided by $7$.",
    "How many positive divisors does $36$ have?",
    "Let $x+y=10$ and $xy=21$. Find $x^2+y^2$.",
    "Compute $\\binom{8}{3}$.",
)
TRACE = "Let me compute it.\n```python\nprint(2+3)\n```\n```output\n5\n```\n"
GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def engine():
    eng = get_engine("transformers", CONFIG)
    yield eng
    eng.close()


def prompts(engine) -> list[str]:
    return [engine.chat_prompt(p) for p in PROBLEMS] + [engine.chat_prompt("What is $2+3$?") + TRACE]


def gen(engine, texts, params=GREEDY, *, max_tokens=24, seeds=None, deadline_s=60.0):
    seeds = seeds or list(range(len(texts)))
    reqs = [GenerationRequest(prompt=t, max_tokens=max_tokens, seed=s) for t, s in zip(texts, seeds)]
    return engine.generate(reqs, params, deadline=time.monotonic() + deadline_s)


def test_it_is_a_blocking_engine_with_vllms_template_and_counts(engine):
    assert isinstance(engine, Engine) and not isinstance(engine, AsyncEngine)
    assert engine.name == "transformers"
    limit = engine._model.config.max_position_embeddings
    assert engine.max_model_len == min(CONFIG.engine.max_model_len, limit)
    prompt = engine.chat_prompt("What is $1+1$?")
    assert "What is $1+1$?" in prompt and prompt != "What is $1+1$?"
    out = gen(engine, [prompt], max_tokens=2)[0]
    assert out.prompt_tokens == engine.count_tokens(prompt)  # BOS included, as the tokenizer adds it


def test_stop_end_follows_vllm():
    assert stop_end("abcde", 2, ["de"]) == 5
    assert stop_end("abcde", 2, ["c"]) is None  # only stop strings reaching into the new text count
    assert stop_end("abcde", 2, ["cd"]) == 4  # one that starts in the old text and ends in the new
    assert stop_end("xxabcd", 3, ["cd", "ab"]) == 4  # the one ending first wins, whatever the order
    assert stop_end("xxab", 2, ["", "ab"]) == 4


def test_stop_string_is_kept_and_ends_the_generation(engine):
    params = SamplingParams(temperature=0.8, stop=("e",))
    out = gen(engine, [engine.chat_prompt("Count.")] * 4, params, max_tokens=200)
    stopped = [g for g in out if g.finish_reason == "stop"]
    assert stopped and all(g.text.endswith("e") and "e" not in g.text[:-1] for g in stopped)


def test_max_tokens_ends_in_length(engine):
    out = gen(engine, prompts(engine), SamplingParams(temperature=1.0), max_tokens=5)
    assert all(g.num_tokens <= 5 for g in out)
    assert any(g.finish_reason == "length" and g.num_tokens == 5 for g in out)


def test_a_passed_deadline_returns_at_once(engine):
    start = time.monotonic()
    out = gen(engine, prompts(engine), max_tokens=1000, deadline_s=-1.0)
    assert time.monotonic() - start < 0.5
    assert all(g.finish_reason == "deadline" and g.num_tokens == 0 and g.prompt_tokens > 0 for g in out)


def test_the_deadline_cuts_generation_between_steps(engine):
    start = time.monotonic()
    out = gen(engine, [engine.chat_prompt("Go on.")] * 8, SamplingParams(temperature=1.0), max_tokens=1900,
              deadline_s=0.15)
    assert time.monotonic() - start < 0.15 + 1.0
    # a sample may end by itself first (EOS); the rest were cut off with their text so far
    assert any(g.finish_reason == "deadline" for g in out)
    assert all(g.finish_reason in ("deadline", "eos") for g in out)
    assert gen(engine, [engine.chat_prompt("Again.")], max_tokens=4)[0].num_tokens > 0


def test_seeds_make_sampling_reproducible(engine):
    p = engine.chat_prompt("Find x.")
    params = SamplingParams(temperature=1.5)  # hot enough that even a trained model's samples differ
    first = gen(engine, [p] * 4, params, max_tokens=32, seeds=[1, 2, 3, 1])
    assert first[0].text == first[3].text  # same seed, same sample
    assert len({g.text for g in first[:3]}) >= 2
    again = gen(engine, [p], params, max_tokens=32, seeds=[1])[0]
    assert again.text == first[0].text


def test_a_tiny_top_p_samples_the_greedy_token(engine):
    greedy = gen(engine, prompts(engine))
    nucleus = gen(engine, prompts(engine), SamplingParams(temperature=0.8, top_p=1e-6), seeds=[7] * 6)
    assert [g.text for g in nucleus] == [g.text for g in greedy]


def test_a_batch_of_mixed_lengths_decodes_as_each_prompt_alone(engine):
    texts = prompts(engine)
    assert len({engine.count_tokens(t) for t in texts}) > 2
    batched = gen(engine, texts, max_tokens=32)
    alone = [gen(engine, [t], max_tokens=32)[0] for t in texts]
    assert batched == alone


def test_a_prompt_too_long_is_an_error_and_the_others_go_on(engine):
    long_prompt = "x " * (engine.max_model_len + 10)
    bad, good = gen(engine, [long_prompt, engine.chat_prompt("Fine.")], max_tokens=4)
    assert bad.finish_reason == "error" and bad.num_tokens == 0
    assert good.num_tokens > 0 and good.finish_reason in ("length", "eos")


def test_dry_run_command_on_this_backend(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "aimo_kernel", "dry-run", "--out", str(tmp_path), "--no-progress",
         "--set", "engine.backend=transformers", "--set", f"engine.model={CONFIG.engine.model}",
         "--set", "tir.num_candidates=2", "--set", "sampling.max_new_tokens=48"],
        capture_output=True, text=True, timeout=900, cwd=ROOT, env=dict(os.environ),  # a loaded machine
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "accuracy: " in out.stdout and "/10 = " in out.stdout
    sub = pl.read_parquet(tmp_path / "submission.parquet")
    assert sub.height == 10 and sub["answer"].is_between(0, 99_999).all()
    # a failed engine still answers (the fallback): make sure this one really generated every time
    lines = [json.loads(x) for x in (tmp_path / "trace.jsonl").read_text().splitlines()]
    assert len(lines) == 10 and all(x["stop_reason"] != "error" and x["tokens"] > 0 for x in lines)


@pytest.fixture(scope="module")
def vllm_engine():
    pytest.importorskip("vllm")  # this backend exists for machines without it
    eng = get_engine("vllm-offline", CONFIG)  # ~45 s on CPU: only the agreement tests ask for it
    yield eng
    eng.close()


@pytest.mark.vllm
# the solver's stop string, and one that can end inside a token ("resu" of "result")
@pytest.mark.parametrize("stop", [(), (STOP,), (STOP, "resu")], ids=["no-stop", "solver-stop", "mid-token-stop"])
def test_greedy_output_matches_vllm_token_for_token(engine, vllm_engine, stop):
    params = SamplingParams(temperature=0.0, stop=stop)
    ours = gen(engine, prompts(engine), params, max_tokens=96)
    theirs = gen(vllm_engine, prompts(vllm_engine), params, max_tokens=96)
    assert prompts(engine) == prompts(vllm_engine)
    for a, b in zip(ours, theirs):
        assert (a.text, a.num_tokens, a.finish_reason, a.prompt_tokens) == \
               (b.text, b.num_tokens, b.finish_reason, b.prompt_tokens)
