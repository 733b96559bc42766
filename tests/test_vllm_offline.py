"""The offline vLLM backend (``vllm-offline``: ``LLM`` driven step by step) on CPU with the tiny model.

One engine for the module. Covers stop strings kept, seeds, max_tokens, the deadline abort between
steps, and prefix caching. The streaming backend the solver uses by default is in test_vllm_e2e.py.
"""

from __future__ import annotations

import time

import pytest

from aimo_kernel.config.presets import get_preset
from aimo_kernel.engine import GenerationRequest, SamplingParams, get_engine

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def engine():
    eng = get_engine("vllm-offline", get_preset("cpu"))
    yield eng
    eng.close()


def gen(engine, prompts, *, max_tokens=24, seeds=None, stop=(), deadline_s=60.0):
    seeds = seeds or list(range(len(prompts)))
    reqs = [GenerationRequest(prompt=p, max_tokens=max_tokens, seed=s) for p, s in zip(prompts, seeds)]
    return engine.generate(reqs, SamplingParams(temperature=0.8, stop=stop), deadline=time.monotonic() + deadline_s)


def test_max_tokens_and_seeds(engine):
    p = engine.chat_prompt("Find x.")
    first = gen(engine, [p] * 4, seeds=[1, 2, 3, 1])
    assert all(g.finish_reason in ("length", "eos", "stop") and g.num_tokens <= 24 for g in first)
    assert first[0].text == first[3].text  # same seed, same sample
    assert len({g.text for g in first[:3]}) == 3


def test_stop_string_is_kept(engine):
    out = gen(engine, [engine.chat_prompt("Count.")] * 3, max_tokens=200, stop=("e",))
    stopped = [g for g in out if g.finish_reason == "stop"]
    assert stopped and all(g.text.endswith("e") and "e" not in g.text[:-1] for g in stopped)


def test_deadline_aborts_unfinished_requests(engine):
    start = time.monotonic()
    out = gen(engine, [engine.chat_prompt("Go on.")] * 4, max_tokens=1900, deadline_s=0.05)
    assert time.monotonic() - start < 1.0
    assert all(g.finish_reason == "deadline" for g in out)
    assert gen(engine, [engine.chat_prompt("Again.")], max_tokens=8)[0].num_tokens > 0


def test_prefix_caching_hits_on_a_shared_prompt(engine):
    long_prompt = engine.chat_prompt("Let $a_1, a_2, \\dots$ be a sequence with " * 6)
    gen(engine, [long_prompt], max_tokens=4)
    assert gen(engine, [long_prompt], max_tokens=4, seeds=[9])[0].cached_tokens > 0
