"""``aimo-kernel profile``: the projection's arithmetic on hand-computed cases, and the report end to end.

The end-to-end report runs on a trace written by a dry-run on the fake streaming engine (seconds, no
vLLM); the calibration file as a target is covered in test_calibrate.py.
"""

from __future__ import annotations

import argparse
import json
import math

import pytest

from aimo_kernel.config import BudgetConfig, Config, EngineConfig, SamplingConfig, TIRConfig, VoteConfig
from aimo_kernel.testing.hardware import ThroughputModel
from aimo_kernel.tools import profile as prof
from aimo_kernel.tools.profile import CandidateRow, ProblemRow, Replay, RoundRow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# step(batch, ctx) = 0.01 + batch × ctx × 0.0001 seconds
MODEL = ThroughputModel(name="hand", weight_bytes=0.01, kv_bytes_per_token=1e-4, bandwidth=1.0, efficiency=1.0,
                        fixed_step_s=0.0, max_batch=2)


def problem(stop: str = "finished") -> ProblemRow:
    a = CandidateRow(index=0, answer=7, status="done", reason="eos",
                     rounds=(RoundRow(10, 100, 1.0, 0.5, ()), RoundRow(120, 50, 1.0, 0.0, ())))
    b = CandidateRow(index=1, answer=7, status="done", reason="eos", rounds=(RoundRow(10, 20, 0.2, 0.0, ()),))
    return ProblemRow(id="p", answer=7, gold=7, stop_reason=stop, given_s=10.0, used_s=5.0, speed_level=0,
                      votes={"7": 2.0}, tokens=170, code_blocks=1, candidates=(a, b))


def test_natural_seconds_by_hand():
    replay = Replay(model=MODEL, trace_candidates=2, max_new_tokens=1000)
    # A: 100 × (0.01 + 2×60×1e-4) + 0.5 = 2.7, then 50 × (0.01 + 2×145×1e-4) = 1.95; B: 20 × 0.014 = 0.28
    assert replay.natural_seconds(problem(), 2, 2) == pytest.approx(4.65)
    assert replay.natural_seconds(problem(), 2, 1) == pytest.approx(2.7)
    # N=4 launches A, B, A, B on max_batch=2 slots: the second A starts when B ends (0.28 + 4.65)
    assert replay.natural_seconds(problem(), 4, 2) == pytest.approx(4.93)
    # a 40-token round limit: A = 40 × 0.016 + 0.5 + 40 × 0.038 = 2.66
    assert Replay(MODEL, 2, 40).natural_seconds(problem(), 2, 2) == pytest.approx(2.66)
    assert math.isinf(replay.natural_seconds(problem("deadline"), 2, 2))


def small_config(num_problems: int = 2) -> Config:
    return Config(tir=TIRConfig(num_candidates=2, max_rounds=2),
                  budget=BudgetConfig(total_seconds=1000.0, num_problems=num_problems, per_problem_seconds=600.0,
                                      min_problem_seconds=10.0, safety_margin_s=100.0, overrun_allowance_s=5.0),
                  engine=EngineConfig(backend="fake"))


def test_replay_run_through_the_planner_by_hand():
    # load 50 s, deadline 900: problem 1 gets 850 / 2 = 425 s and uses 100; problem 2 gets min(cap 600,
    # 750 left − 5 overrun) = 600, never converges and overruns by 5: end = 50 + 100 + 605 = 755.
    needs = {0: 100.0, 1: math.inf}
    run = prof.replay_run(small_config(), [0, 1], lambda p, n, m: needs[p], load_s=50.0)
    assert run.used_s == (100.0, 605.0) and run.end_s == pytest.approx(755.0)
    assert (run.cut, run.unconverged, run.degraded) == (0, 1, 0)
    needs[1] = 700.0  # converges, but after its budget: cut
    assert prof.replay_run(small_config(), [0, 1], lambda p, n, m: needs[p], load_s=50.0).cut == 1


def test_quantiles_mixes_and_fit():
    assert prof.quantile([4, 1, 3, 2], 0.5) == 2 and prof.quantile([4, 1, 3, 2], 0.95) == 4
    runs = prof.mixes(3, 5, 4, seed=1)
    assert runs[0] == [0, 1, 2, 0, 1] and len(runs) == 4 and runs == prof.mixes(3, 5, 4, seed=1)
    replay = Replay(model=MODEL, trace_candidates=2, max_new_tokens=1000)
    proj = prof.project([problem()], small_config(), replay, runs=[[0, 0]], load_s=50.0)
    assert proj.end(0.5) == pytest.approx(50.0 + 2 * 4.65) and proj.fits and proj.limit_s == 905.0
    assert proj.demand_s == pytest.approx((59.3,))
    grid = prof.search_grid([problem()], small_config(), replay, runs=[[0, 0]], load_s=50.0, grid_n=(1, 2),
                            grid_m=(1, 2))
    assert grid.best is not None and (grid.best.n, grid.best.m) == (2, 2)


def fake_trace(tmp_path_factory: pytest.TempPathFactory) -> str:
    from aimo_kernel.run.dryrun import dry_run
    from aimo_kernel.run.problems import bundled_problems_path
    from aimo_kernel.testing.fake import FakeAsyncEngine, scripted

    turns = ["Let me compute.\n```python\nprint(6 + 1)\n```\n```output\n", "So \\boxed{7}."]
    cfg = Config(preset="custom", tir=TIRConfig(num_candidates=3, max_rounds=2, mode="async"),
                 sampling=SamplingConfig(max_new_tokens=256), vote=VoteConfig(),
                 budget=BudgetConfig(total_seconds=600.0, num_problems=50, per_problem_seconds=20.0,
                                     min_problem_seconds=1.0, safety_margin_s=10.0),
                 engine=EngineConfig(backend="fake-async"))
    out = tmp_path_factory.mktemp("dry")
    dry_run(cfg, bundled_problems_path(), out, show_progress=False,
            engine_factory=lambda c: FakeAsyncEngine(scripted(turns), seconds_per_token=1e-4))
    return str(out / "trace.jsonl")


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return fake_trace(tmp_path_factory)


def args_for(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    prof.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["profile", *argv])


def test_profile_of_a_dry_run_trace(trace, tmp_path, capsys):
    rows = prof.read_trace(trace)
    assert rows and all(p.candidates for p in rows) and sum(p.code_blocks for p in rows) > 0
    out = tmp_path / "report"
    assert prof.run(args_for(trace, "--out", str(out), "--preset", "aimo1-t4x2", "--trace-candidates", "3",
                             "--mixes", "30", "--grid-mixes", "5", "--no-progress")) == 0
    verdict = capsys.readouterr().out
    assert verdict.startswith("**Fits.**") and "t4x2" in verdict
    report = (out / "report.md").read_text()
    assert report.startswith("# Time-budget profile\n\n**Fits.**")
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 8
    for png in pngs:
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, png.name
        assert f"]({png.name})" in report
    projection = json.loads((out / "projection.json").read_text())
    assert projection["projection"]["n"] == 48 and projection["suggested"]["n"] >= 48


def test_the_report_is_reproducible_from_the_trace(trace, tmp_path):
    opts = prof.ProfileOptions(hardware="l4x4", trace_candidates=3, mixes=20, grid_mixes=3)
    from aimo_kernel.config.presets import get_preset

    first = prof.profile(trace, tmp_path / "a", get_preset("aimo2-l4x4"), opts)
    second = prof.profile(trace, tmp_path / "b", get_preset("aimo2-l4x4"), opts)
    for name in ("report.md", "projection.json", "projection.png", "votes.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert first.verdict == second.verdict


def test_a_trace_that_never_converges_does_not_fit(tmp_path):
    rec = {"id": "x", "answer": 0, "gold": None, "stop_reason": "deadline", "budget_given_s": 600.0,
           "budget_used_s": 600.0, "votes": {}, "tokens": 0, "code_blocks": 0, "candidates": []}
    path = tmp_path / "trace.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    from aimo_kernel.config.presets import get_preset

    result = prof.profile(path, tmp_path / "r", get_preset("aimo1-t4x2"),
                          prof.ProfileOptions(hardware="t4x2", trace_candidates=48, mixes=5, grid=False))
    # every problem takes what it is given: the run fills the time to the planner's promise
    assert result.projection.end(0.5) > 8 * 3600 and result.projection.runs[0].unconverged == 50
    assert "50 problems" in result.verdict and "never converged" in result.verdict


def test_bad_trace_and_hardware_are_one_line_errors(tmp_path):
    from aimo_kernel.errors import UsageError as CliError

    bad = tmp_path / "trace.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(CliError, match="trace.jsonl:1"):
        prof.run(args_for(str(bad), "--no-progress"))
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"id": 1, "candidates": []}) + "\n")
    with pytest.raises(CliError, match="unknown hardware"):
        prof.run(args_for(str(good), "--hardware", "tpu", "--no-progress"))
