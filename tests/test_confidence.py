"""Confidence from token log-probabilities: the entropy math, the running meter, the vote weights, the
vote mode's config, the solver carrying each candidate's confidence into its result and the trace,
and the engines' log-probability conversion (vLLM's output shape, the transformers backend)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
from test_solver import ANSWER_TURN, CODE_TURN, FakeSandbox, config

from aimo_kernel.config import ConfigError, VoteConfig
from aimo_kernel.core.confidence import (
    Confidence,
    ConfidenceMeter,
    token_entropy,
    vote_weight,
    vote_weights,
)
from aimo_kernel.engine.base import Delta, GenerationRequest, SamplingParams
from aimo_kernel.engine.vllm_backend import token_logprobs
from aimo_kernel.run.trace import TRACE_VERSION, ProblemTrace
from aimo_kernel.solve.dialect import get_dialect
from aimo_kernel.solve.pipeline import Solver
from aimo_kernel.solve.result import sampling_params
from aimo_kernel.testing.fake import FakeAsyncEngine, scripted

# -- the math ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("top", "expected"), [
    ((0.0,), 0.0),  # certain
    ((math.log(0.5), math.log(0.5)), math.log(2)),  # the top 2 hold all the mass: exact
    ((math.log(0.25),) * 4, math.log(4)),
    ((math.log(0.5),), math.log(2)),  # half the mass left: counted as one more outcome
    ((math.log(0.5), float("-inf"), float("nan")), math.log(2)),  # -inf and nan add nothing
])
def test_token_entropy_of_the_top_k(top, expected):
    assert token_entropy(top) == pytest.approx(expected)


def test_the_top_k_entropy_is_a_lower_bound_that_tightens_with_k():
    probs = [0.4, 0.3, 0.15, 0.1, 0.05]
    exact = -sum(p * math.log(p) for p in probs)
    approx = [token_entropy([math.log(p) for p in probs[:k]]) for k in range(1, 6)]
    assert all(a <= exact + 1e-12 for a in approx)
    assert all(b >= a - 1e-12 for a, b in zip(approx, approx[1:])) and approx[-1] == pytest.approx(exact)


def test_the_meter_keeps_running_sums_and_a_tail_window():
    meter = ConfidenceMeter(tail_tokens=2)
    certain, coin = (0.0,), (math.log(0.5), math.log(0.5))
    meter.add([0.0, -0.5], [certain, coin])
    meter.add([-0.5], [coin])
    c = meter.summary()
    assert (c.tokens, c.tail_tokens) == (3, 2)
    assert c.mean_entropy == pytest.approx(2 * math.log(2) / 3)
    assert c.tail_entropy == pytest.approx(math.log(2))  # only the last two tokens
    assert c.mean_logprob == pytest.approx(-1 / 3)
    meter.reset()
    assert meter.summary() == Confidence() and not meter.summary().known
    with pytest.raises(ValueError, match="tail_tokens"):
        ConfidenceMeter(tail_tokens=0)


def test_confidence_validates_and_names_the_signal():
    with pytest.raises(ValueError, match="tail_tokens"):
        Confidence(tokens=1, tail_tokens=2)
    with pytest.raises(ValueError, match="mean_entropy"):
        Confidence(tokens=1, mean_entropy=float("nan"))
    c = Confidence(tokens=4, mean_entropy=0.5, tail_entropy=0.2, tail_tokens=4, mean_logprob=-0.3)
    assert [c.uncertainty(s) for s in ("mean_entropy", "tail_entropy", "mean_logprob")] == [0.5, 0.2, 0.3]
    with pytest.raises(ValueError, match="signal"):
        c.uncertainty("entropy")


def test_vote_weights():
    sure = Confidence(tokens=2, tail_entropy=0.1, tail_tokens=2)
    unsure = Confidence(tokens=2, tail_entropy=1.0, tail_tokens=2)
    assert vote_weight(sure, signal="tail_entropy", power=1.0, floor=0.01) == pytest.approx(10.0)
    assert vote_weight(sure, signal="tail_entropy", power=0.0, floor=0.01) == 1.0  # the majority vote
    assert vote_weight(Confidence(tokens=1, tail_tokens=1), signal="tail_entropy", power=1.0, floor=0.05) == \
        pytest.approx(20.0)  # the floor caps a certain candidate's weight
    assert vote_weight(unsure, signal="tail_entropy", power=2.0, floor=0.01, code_verified=True, code_bonus=3.0) \
        == pytest.approx(3.0)
    kw = {"signal": "tail_entropy", "power": 1.0, "floor": 0.01}
    assert vote_weights([sure, Confidence()], [False, True], **kw, code_bonus=2.0) == [1.0, 2.0]  # one unknown: none
    assert vote_weights([sure, Confidence()], [False, False], **kw, answers=[3, None]) == \
        pytest.approx([10.0, 100.0])  # a candidate that does not vote does not switch the weighting off
    with pytest.raises(ValueError, match="power"):
        vote_weight(sure, signal="tail_entropy", power=-1.0, floor=0.01)
    with pytest.raises(ValueError, match="one verified flag"):
        vote_weights([sure], [], **kw)


# -- config ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "fragment"), [
    ({"mode": "best"}, "VoteConfig.mode must be one of ('majority', 'weighted')"),
    ({"mode": "weighted"}, "VoteConfig.confidence_top_k must be in [1, 100] with mode 'weighted', got 0"),
    ({"confidence": "entropy"}, "VoteConfig.confidence must be one of"),
    ({"confidence_top_k": 101}, "VoteConfig.confidence_top_k must be in [0, 100], got 101"),
    ({"confidence_tail_tokens": 0}, "VoteConfig.confidence_tail_tokens must be in [1, 1e+06], got 0"),
    ({"confidence_power": -1.0}, "VoteConfig.confidence_power must be in [0, 16], got -1.0"),
    ({"confidence_floor": 0.0}, "VoteConfig.confidence_floor must be in [1e-06, 100], got 0.0"),
    ({"code_bonus": -2.0}, "VoteConfig.code_bonus must be in [0, 1000], got -2.0"),
])
def test_vote_config_names_the_field_the_range_and_the_value(fields, fragment):
    with pytest.raises(ConfigError) as err:
        VoteConfig(**fields)
    assert fragment in str(err.value)


def test_log_probabilities_are_asked_for_only_when_a_confidence_is_recorded():
    cfg = config()
    assert sampling_params(cfg, get_dialect()).logprobs is None
    cfg = dataclasses.replace(cfg, vote=VoteConfig(confidence_top_k=5))
    assert sampling_params(cfg, get_dialect()).logprobs == 5


# -- the solver carries the confidence ------------------------------------------------------------

SURE = (-0.01, -6.0, -7.0)
UNSURE = (-0.7, -1.0, -1.5)


class LogprobEngine(FakeAsyncEngine):
    """The fake streaming engine, with log-probabilities: sure of a trace that answers 3, unsure otherwise."""

    async def stream(self, request: GenerationRequest, params: SamplingParams, request_id: str) -> AsyncIterator[Delta]:
        async for d in super().stream(request, params, request_id):
            top = SURE if "boxed{3}" in d.text or "boxed{42}" in d.text else UNSURE
            if params.logprobs is None:
                yield d
            else:
                yield dataclasses.replace(d, logprobs=(top[0],) * d.num_tokens, top_logprobs=(top,) * d.num_tokens)


def answers_in_turn(*answers: int):
    """The n-th request answers answers[n] (the candidates start in index order), without code."""
    counter = itertools.count()
    return lambda req: f"We think.\n\\boxed{{{answers[next(counter) % len(answers)]}}}"


def vote_config(**fields) -> VoteConfig:
    return VoteConfig(fallback_answer=0, confidence_top_k=3, confidence_tail_tokens=4, **fields)


def solve(responder, vote: VoteConfig, sandbox=None, **tir):
    cfg = dataclasses.replace(config(no_code_policy="keep", **{"num_candidates": 5, **tir}), vote=vote)
    engine = LogprobEngine(responder, chunk=10_000)  # one piece per generation: its confidence is its text's
    return Solver(engine, sandbox or FakeSandbox(), cfg).run("What is 6 times 7?")


def test_each_candidate_records_its_confidence_and_the_weighted_vote_follows_it():
    responder = answers_in_turn(5, 5, 5, 3, 3)
    majority = solve(responder, vote_config())
    weighted = solve(answers_in_turn(5, 5, 5, 3, 3), vote_config(mode="weighted"))
    assert majority.answer == 5 and weighted.answer == 3  # two sure candidates outweigh three unsure ones
    for c in weighted.candidates:
        assert c.confidence.tokens == c.tokens  # every generated token was measured
        assert c.confidence.tail_tokens == 4
    by_answer = {c.answer: c.confidence for c in weighted.candidates}
    assert by_answer[3].mean_entropy < by_answer[5].mean_entropy
    assert weighted.vote.counts[3] > weighted.vote.counts[5]


def test_without_log_probabilities_no_confidence_is_recorded_and_weighted_is_the_majority():
    result = solve(answers_in_turn(5, 5, 5, 3, 3), VoteConfig(fallback_answer=0))
    assert all(not c.confidence.known for c in result.candidates)
    assert result.answer == 5


def test_a_code_verified_answer_is_flagged_and_can_weigh_more():
    # every candidate runs print(6 * 7) -> 42 and boxes 42; the sandbox's output makes it code-verified
    result = solve(scripted([CODE_TURN, ANSWER_TURN]), vote_config(mode="weighted", code_bonus=2.0),
                   num_candidates=2)
    assert result.answer == 42 and all(c.code_verified for c in result.candidates)
    unverified = solve(scripted([CODE_TURN, ANSWER_TURN]), vote_config(), sandbox=FakeSandbox("41"),
                       num_candidates=2)
    assert not any(c.code_verified for c in unverified.candidates)


def test_the_trace_keeps_the_confidence_and_reads_older_records():
    result = solve(answers_in_turn(5, 3), vote_config(), num_candidates=2)
    rec = ProblemTrace.from_result("p", result, 3, used_s=1.0)
    line = json.loads(json.dumps(rec.to_json()))
    assert line["version"] == TRACE_VERSION == 3
    back = ProblemTrace.from_json(line)
    assert [c.confidence for c in back.candidates] == [c.confidence for c in result.candidates]
    assert all(c.confidence.known for c in back.candidates)
    for c in line["candidates"]:  # a version-2 record: no confidence, no code_verified
        del c["confidence"], c["code_verified"]
    line["version"] = 2
    old = ProblemTrace.from_json(line)
    assert all(c.confidence == Confidence() and not c.code_verified for c in old.candidates)
    line["version"] = 3
    with pytest.raises(ValueError, match="confidence"):
        ProblemTrace.from_json(line)  # a current record must carry it


# -- the engines' conversion -----------------------------------------------------------------------


def test_vllm_logprobs_become_the_sampled_value_and_the_sorted_top():
    lp = lambda v: SimpleNamespace(logprob=v)  # noqa: E731 (vLLM's Logprob has .logprob)
    completion = SimpleNamespace(token_ids=[7, 9], logprobs=[{3: lp(-0.2), 7: lp(-2.0)}, {9: lp(-0.1), 1: lp(-3.0)}])
    own, top = token_logprobs(completion)
    assert own == (-2.0, -0.1)  # the sampled token's, also when it is not the most likely
    assert top == ((-0.2, -2.0), (-0.1, -3.0))
    assert token_logprobs(SimpleNamespace(token_ids=[1], logprobs=None)) == ((), ())


def test_the_transformers_backend_returns_log_probabilities():
    pytest.importorskip("transformers")
    from aimo_kernel.config.presets import get_preset
    from aimo_kernel.engine import get_engine

    base = get_preset("cpu")
    cfg = dataclasses.replace(base, engine=dataclasses.replace(base.engine, backend="transformers"))
    engine = get_engine("transformers", cfg)
    try:
        req = GenerationRequest(prompt=engine.chat_prompt("What is 2+2?"), max_tokens=12, seed=1)
        gen, = engine.generate([req], SamplingParams(temperature=1.0, logprobs=4), deadline=1e18)
        plain, = engine.generate([req], SamplingParams(temperature=1.0), deadline=1e18)
    finally:
        engine.close()
    assert len(gen.logprobs) == len(gen.top_logprobs) == gen.num_tokens > 0
    assert all(len(t) == 4 and list(t) == sorted(t, reverse=True) and lp <= t[0] + 1e-6
               for lp, t in zip(gen.logprobs, gen.top_logprobs))
    assert plain.logprobs == () and plain.text == gen.text  # asking for them changes nothing sampled
