"""Time budgets: hand-checked planner cases and the deadline property over 1000 simulated runs."""

from __future__ import annotations

import pytest

from aimo_kernel.budget import SPEED_LEVELS, BudgetPlanner, effort, speed_level
from aimo_kernel.config import BudgetConfig, TIRConfig
from aimo_kernel.presets import get_preset
from aimo_kernel.simulation import FakeClock, simulate_run


def planner(clock: FakeClock, **budget: float) -> BudgetPlanner:
    cfg = BudgetConfig(**{"total_seconds": 1000.0, "num_problems": 10, "per_problem_seconds": 300.0,
                          "min_problem_seconds": 20.0, "safety_margin_s": 100.0, "overrun_allowance_s": 0.0,
                          **budget})  # type: ignore[arg-type]
    return BudgetPlanner(cfg, TIRConfig(num_candidates=48, max_rounds=4), start=0.0, clock=clock)


def test_first_problem_gets_the_even_share_of_what_is_left_after_load():
    clock = FakeClock(100.0)  # the model took 100 s to load
    plan = planner(clock).plan()
    assert plan.seconds == pytest.approx((900 - 100) / 10)
    assert plan.deadline == pytest.approx(180.0)
    assert (plan.speed_level, plan.num_candidates, plan.max_rounds) == (0, 48, 4)


def test_unused_time_is_carried_forward():
    clock = FakeClock()
    p = planner(clock)
    first = p.plan()  # 90 s
    clock.now += 10.0
    p.done(first.seconds, 10.0)  # decided early: 80 s handed back
    second = p.plan()
    # use ratio 10/90, planned as 0.7 of it but never below 0.25: 890 / (8 * 0.25 + 1)
    assert second.seconds == pytest.approx(890 / 3)
    assert second.seconds > first.seconds


def test_budget_is_capped():
    clock = FakeClock()
    p = planner(clock, per_problem_seconds=50.0)
    assert p.plan().seconds == 50.0


def test_later_floors_are_never_taken():
    clock = FakeClock(850.0)  # 50 s left for 10 problems with a 20 s floor: split evenly instead
    p = planner(clock)
    assert p.plan().seconds == pytest.approx(5.0)
    clock = FakeClock(600.0)  # 300 s left: 9 later floors of 20 s stay reserved
    p = planner(clock, per_problem_seconds=300.0)
    p.even_share = 30.0
    assert p.plan().seconds <= 300 - 9 * 20


def test_restart_reserve_comes_after_the_floors():
    clock = FakeClock(100.0)
    p = planner(clock, restart_reserve_s=700.0)
    assert p.plan().seconds == 20.0  # the reserve would leave nothing: the floor stays


def test_last_problem_may_use_everything_left():
    clock = FakeClock(500.0)
    p = planner(clock, per_problem_seconds=1000.0)
    p.planned = 9
    assert p.plan().seconds == pytest.approx(400.0)


def test_past_the_deadline_a_problem_gets_nothing():
    clock = FakeClock(2000.0)
    assert planner(clock).plan().seconds == 0.0


@pytest.mark.parametrize(("ratio", "level"), [(1.5, 0), (0.8, 0), (0.6, 1), (0.4, 2), (0.1, 3)])
def test_speed_levels(ratio, level):
    assert speed_level(ratio) == level


def test_effort_shrinks_with_the_level_but_never_to_zero():
    tir = TIRConfig(num_candidates=48, max_rounds=4)
    assert [effort(tir, lvl) for lvl in range(len(SPEED_LEVELS))] == [(48, 4), (36, 4), (24, 3), (16, 2)]
    assert effort(TIRConfig(num_candidates=1, max_rounds=1), 3) == (1, 1)


def test_behind_schedule_lowers_the_speed_level():
    clock = FakeClock()
    p = planner(clock)
    p.plan()
    clock.now = 700.0  # 200 s left for 9 problems: well behind the 90 s even share
    p.done(90.0, 90.0)
    plan = p.plan()
    assert plan.speed_level >= 2 and plan.num_candidates < 48


def test_deadline_property_over_1000_simulated_competitions():
    """AIMO1 preset on the T4×2 model: 50 problems, some never converge, occasional engine stalls."""
    cfg = get_preset("aimo1-t4x2")
    planned_end = cfg.budget.total_seconds - cfg.budget.safety_margin_s
    floor = cfg.budget.min_problem_seconds
    worst_margin, worst_use, worst_floor = float("inf"), 1.0, float("inf")
    for seed in range(1000):
        run = simulate_run(cfg, seed)
        assert len(run.problems) == 50
        worst_margin = min(worst_margin, run.margin)
        worst_use = min(worst_use, run.used_share(planned_end))
        worst_floor = min(worst_floor, min(p.given for p in run.problems))
    assert worst_margin >= 600.0, f"a run ended {worst_margin:.0f} s before the deadline"
    assert worst_floor >= floor, f"a problem got {worst_floor:.1f} s, below its {floor:.0f} s floor"
    assert worst_use >= 0.90, f"a run used only {worst_use:.1%} of its time"
