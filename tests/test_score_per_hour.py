"""The score-per-hour benchmark's policies and its N search, on the simulated 2×T4 in virtual time (small)."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

from aimo_kernel.config.presets import get_preset
from aimo_kernel.testing.simulation import PROBLEM_KINDS, problem_mix

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "score_per_hour.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("score_per_hour", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["score_per_hour"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_the_mix_has_the_documented_shares_and_hard_problems_are_never_right():
    mix = problem_mix(20, seed=3)
    counts = {kind: sum(p.kind == kind for p in mix) for kind, *_ in PROBLEM_KINDS}
    assert counts == {"easy": 5, "medium": 7, "hard": 8}
    assert all(p.agreement == 0 for p in mix if p.kind == "hard")
    assert all(0.6 <= p.agreement <= 0.9 for p in mix if p.kind == "easy")
    assert len({p.text for p in mix}) == 20 and problem_mix(20, seed=3) == mix
    with pytest.raises(ValueError):
        problem_mix(0)


def test_numina_gets_the_largest_n_that_fits_and_ours_stays_inside_the_deadline(bench):
    base = get_preset("aimo1-t4x2")
    cfg = dataclasses.replace(base, tir=dataclasses.replace(base.tir, num_candidates=8, max_candidates=16))
    items, deadline, best, mine, tried = bench.sim_compare(8, 0.5, cfg, seed=1)
    full = tried[0]
    assert full.n == 8 and full.overran and full.right == 0  # the deadline is half of what full effort needs
    assert deadline == pytest.approx(0.5 * full.wall)
    assert not best.overran and best.wall <= deadline and best.n < 8
    assert all(s.overran for s in tried[1:-1])  # every larger N tried first overran
    assert not mine.overran and mine.answered == len(items) and mine.wall <= deadline
    hard = sum(p.kind == "hard" for p in problem_mix(8, 1))
    assert mine.right <= len(items) - hard and best.right <= len(items) - hard


def test_the_n_search_goes_down_to_one(bench):
    assert bench.smaller(48) == [36, 24, 18, 12, 9, 6, 3, 1]
    assert bench.smaller(1) == []
