"""The Kaggle shim under both mock APIs, on the fake engine (no vLLM here): predict never raises, the preset
fits the competition and the machine, fallback answers are counted."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import types

import pandas as pd
import polars as pl
import pytest

from aimo_kernel.config import load_config
from aimo_kernel.config.presets import Gpu
from aimo_kernel.run import kaggle, machine, mock_api
from aimo_kernel.run.dryrun import dry_run, format_table
from aimo_kernel.run.kaggle import (
    ShimError,
    detect_api,
    find_competition,
    make_predict,
    resolve_config,
    run,
    to_competition_range,
)
from aimo_kernel.run.mock_api import RerunFinished, write_competition_folder
from aimo_kernel.run.runner import Runner
from aimo_kernel.testing.fake import FakeEngine, scripted

OVERRIDES = ["tir.num_candidates=2", "tir.max_rounds=2"]


def boxing(answer: int):
    """An engine factory whose candidates run one code block, then box ``answer``."""
    turns = ["```python\nprint(1)\n```output\n", f"So the answer is \\boxed{{{answer}}}."]
    return lambda cfg: FakeEngine(scripted(turns))


@pytest.fixture
def problems(tmp_path):
    path = tmp_path / "problems.csv"
    path.write_text("id,problem,answer\nq1,What is 6*7?,42\nq2,What is 40+2?,42\nq3,Compute 2+2.,4\n")
    return path


T4 = Gpu(name="Tesla T4", memory_gib=15.0)
H100 = Gpu(name="NVIDIA H100 80GB HBM3", memory_gib=79.6)
L4 = Gpu(name="NVIDIA L4", memory_gib=22.5)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """cwd is Kaggle's working folder; the fake API packages leave sys.path and sys.modules as they were;
    the machine has no GPU unless a test says otherwise."""
    monkeypatch.setattr(machine, "detect_gpus", lambda: ())
    work = tmp_path / "working"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for var in ("KAGGLE_IS_COMPETITION_RERUN", kaggle.ENV_COMPETITION_DIR, kaggle.ENV_TEST_CSV, kaggle.ENV_OVERRIDES):
        monkeypatch.delenv(var, raising=False)
    before = set(sys.modules)
    yield work
    for name in set(sys.modules) - before:
        del sys.modules[name]


def folder(tmp_path, api, problems):
    return write_competition_folder(tmp_path / f"comp-{api}", api, problems)


# --- finding the competition and its API -------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["aimo1", "aimo2", "aimo3"])
def test_detects_the_api_a_folder_ships(tmp_path, problems, api):
    assert detect_api(folder(tmp_path, api, problems)) == api
    assert detect_api(tmp_path / "nothing") is None


def test_finds_the_competition_under_kaggle_input(tmp_path, problems, monkeypatch):
    monkeypatch.delenv(kaggle.ENV_COMPETITION_DIR, raising=False)
    root = tmp_path / "input"
    (root / "some-model").mkdir(parents=True)
    write_competition_folder(root / "competitions" / "aimo-3", "aimo3", problems)  # one level deeper
    write_competition_folder(root / "aimo-1", "aimo1", problems)
    monkeypatch.setattr(kaggle, "KAGGLE_INPUT", root)
    assert find_competition().api == "aimo1"
    assert find_competition(prefer="aimo3").api == "aimo3"
    assert find_competition(api="aimo3").folder == (root / "competitions" / "aimo-3").resolve()
    with pytest.raises(ShimError, match=r"no competition API \(aimo2\) found"):
        find_competition(api="aimo2")


def test_no_competition_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ShimError, match="attach the competition's data"):
        find_competition(tmp_path)


def test_answers_are_mapped_to_the_competitions_range():
    assert to_competition_range(1042, "aimo1") == 42 and to_competition_range(1999, "aimo2") == 999
    assert to_competition_range(-3, "aimo1") == 997
    assert to_competition_range(12345, "aimo3") == 12345 and to_competition_range(100_000, "aimo3", 5) == 5


# --- AIMO2 / AIMO3: kaggle_evaluation ------------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["aimo2", "aimo3"])
def test_local_run_through_the_inference_server(tmp_path, problems, workdir, api):
    preset = "aimo2-l4x4" if api == "aimo2" else "cpu"
    result = run(preset, overrides=OVERRIDES, competition_dir=folder(tmp_path, api, problems),
                 engine_factory=boxing(42))
    assert (result.api, result.mode) == (api, "local")
    assert result.submission == workdir / "submission.parquet"
    sub = pl.read_parquet(result.submission)
    assert sorted(sub["id"]) == ["q1", "q2", "q3"] and set(sub["answer"]) == {42}
    # the local CSV's answer column reached predict as a third Series: the records are graded
    assert sorted((r.id, r.correct) for r in result.records) == [("q1", True), ("q2", True), ("q3", False)]


def test_the_server_is_up_before_the_model_loads(tmp_path, problems, workdir, monkeypatch):
    events: list[str] = []
    start = mock_api.MockInferenceServer._start

    def recording_start(self):
        events.append("server up")
        return start(self)

    def factory(cfg):
        events.append("model loaded")
        return boxing(1)(cfg)

    monkeypatch.setattr(mock_api.MockInferenceServer, "_start", recording_start)
    run("cpu", overrides=OVERRIDES, competition_dir=folder(tmp_path, "aimo3", problems), engine_factory=factory)
    assert events == ["server up", "model loaded"]  # lazily, inside the first predict, and once


def test_rerun_serves_and_the_gateway_writes_the_submission(tmp_path, problems, workdir, monkeypatch):
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")
    with pytest.raises(RerunFinished):  # serve() never returns on a rerun
        run("cpu", overrides=OVERRIDES, competition_dir=folder(tmp_path, "aimo3", problems), engine_factory=boxing(7))
    assert json.loads((workdir / "result.json").read_text()) == {"Succeeded": True}
    assert set(pl.read_parquet(workdir / "submission.parquet")["answer"]) == {7}


def test_a_broken_engine_still_answers_every_problem_and_says_so(tmp_path, problems, workdir):
    loads = []

    def broken(cfg):
        loads.append(1)
        raise RuntimeError("CUDA out of memory")

    result = run("cpu", overrides=OVERRIDES, competition_dir=folder(tmp_path, "aimo3", problems),
                 engine_factory=broken)
    sub = pl.read_parquet(result.submission)
    assert set(sub["answer"]) == {0} and sorted(sub["id"]) == ["q1", "q2", "q3"]  # an id on every row
    assert all("CUDA out of memory" in r.error for r in result.records) and len(loads) == 2
    summary = result.summary()
    assert "failed to load 2 times" in summary and "fallback answers: 3 of 3 (model not loaded ×3)" in summary
    assert "!!! WARNING: 3 of 3 problems (100%) got the fallback answer 0" in summary


def test_predict_is_a_closure_named_predict_and_there_is_no_module_session():
    runner = Runner(load_config(preset="cpu"), engine_factory=boxing(1))
    predict = make_predict(runner, "aimo3")
    assert isinstance(predict, types.FunctionType) and predict.__name__ == "predict"
    assert not hasattr(kaggle, "_SESSION") and not hasattr(kaggle, "predict")
    runner.close()


def test_the_runner_does_not_import_the_shim():
    code = ("import sys, aimo_kernel.run.runner; assert 'aimo_kernel.run.kaggle' not in sys.modules; "
            "import aimo_kernel.run.kaggle; assert 'aimo_kernel.run.dryrun' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_predict_never_raises(tmp_path, problems, workdir, monkeypatch, caplog):
    def explode(self, *args, **kwargs):
        raise MemoryError("boom")

    monkeypatch.setattr(Runner, "answer", explode)
    with caplog.at_level(logging.ERROR, logger="aimo_kernel.run.kaggle"):
        result = run("cpu", overrides=OVERRIDES, competition_dir=folder(tmp_path, "aimo3", problems))
    assert set(pl.read_parquet(result.submission)["answer"]) == {0}
    assert "MemoryError: boom; answering the fallback 0" in caplog.text
    assert "fallback answers: 3 of 3 (error ×3)" in result.summary()


S = pl.Series
NULL_ID = pl.Series("id", [None], dtype=pl.Null)


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        ((S("id", [5]), S("problem", ["x"])), {}, pl.DataFrame({"id": [5], "answer": [0]})),
        # a CSV with four or more columns passes one Series per column
        ((S("id", ["a"]), S("problem", ["x"]), S("answer", [3]), S("source", ["aime"]), S("year", [2024])), {},
         pl.DataFrame({"id": ["a"], "answer": [0]})),
        ((S("source", ["aime"]), S("id", ["b"]), S("problem", ["x"])), {}, pl.DataFrame({"id": ["b"], "answer": [0]})),
        ((), {}, pl.DataFrame([NULL_ID, S("answer", [0])])),
        ((None, None), {}, pl.DataFrame([NULL_ID, S("answer", [0])])),
        ((7,), {}, pl.DataFrame({"id": [7], "answer": [0]})),
        ((S("id", [1, 2]), S("problem", ["x", "y"])), {}, pl.DataFrame({"id": [1], "answer": [0]})),
        ((S("id", [], dtype=pl.Int32), S("problem", [], dtype=pl.String)), {},
         pl.DataFrame([S("id", [None], dtype=pl.Int32), S("answer", [0])])),
        ((pd.Series([9], name="id"), pd.Series(["x"], name="problem")), {}, pl.DataFrame({"id": [9], "answer": [0]})),
        ((), {"id": S("id", [4]), "problem": S("problem", ["x"])}, pl.DataFrame({"id": [4], "answer": [0]})),
        ((S("id", [3], dtype=pl.UInt16), S("problem", [None], dtype=pl.String)), {},
         pl.DataFrame([S("id", [3], dtype=pl.UInt16), S("answer", [0])])),
        ((S("id", [object()], dtype=pl.Object), 42), {"surprise": 1}, None),
    ],
)
def test_predict_returns_one_row_with_the_id_received_whatever_it_is_called_with(args, kwargs, expected):
    runner = Runner(load_config(preset="cpu", overrides=OVERRIDES), engine_factory=lambda c: FakeEngine(lambda r: "x"))
    try:
        frame = make_predict(runner, "aimo3")(*args, **kwargs)
    finally:
        runner.close()
    assert isinstance(frame, pl.DataFrame) and frame.height == 1 and frame.columns == ["id", "answer"]
    assert frame["answer"].dtype == pl.Int64
    if expected is not None:
        assert frame.equals(expected), frame
    if args and isinstance(args[0], pl.Series) and args[0].name == "id":
        assert frame["id"].dtype == args[0].dtype  # the same dtype as received (AIMO2 checks it)
    assert len(runner.records) == 1  # counted, with its reason


def test_predict_under_strict_raises():
    runner = Runner(load_config(preset="cpu"), engine_factory=boxing(1), strict=True)
    predict = make_predict(runner, "aimo3")
    runner.answer = lambda *a, **k: 1 / 0  # type: ignore[method-assign]
    with pytest.raises(ZeroDivisionError):
        predict(pl.Series("id", [1]), pl.Series("problem", ["x"]))


def test_overrides_come_from_the_environment(tmp_path, problems, workdir, monkeypatch):
    monkeypatch.setenv(kaggle.ENV_OVERRIDES, "tir.num_candidates=1; vote.fallback_answer=9")
    monkeypatch.setenv(kaggle.ENV_COMPETITION_DIR, str(folder(tmp_path, "aimo3", problems)))

    def broken(cfg):
        assert cfg.tir.num_candidates == 1
        raise RuntimeError("no engine")

    result = run("cpu", engine_factory=broken)
    assert set(pl.read_parquet(result.submission)["answer"]) == {9}


# --- AIMO1: the aimo module ---------------------------------------------------------------------------------------


def test_aimo1_iterate_and_predict(tmp_path, problems, workdir, capsys):
    result = run("cpu", overrides=OVERRIDES, competition_dir=folder(tmp_path, "aimo1", problems),
                 engine_factory=boxing(1042))
    out = capsys.readouterr().out
    assert "!!! aimo_kernel: preset cpu targets aimo3, the folder ships aimo1: using aimo1's answers (0..999)" in out
    assert (result.api, result.submission) == ("aimo1", workdir / "submission.csv")
    sub = pd.read_csv(result.submission)
    assert sorted(sub["id"]) == ["q1", "q2", "q3"] and set(sub["answer"]) == {42}  # mod 1000


def test_aimo1_a_failing_problem_gets_the_fallback(tmp_path, problems, workdir, monkeypatch):
    monkeypatch.setattr(Runner, "answer", lambda self, *a, **k: 1 / 0)
    result = run("aimo1-t4x2", competition_dir=folder(tmp_path, "aimo1", problems))
    assert set(pd.read_csv(result.submission)["answer"]) == {0}


# --- the dry-run goes through the same mocks ------------------------------------------------------------------------


def test_dry_run_uses_the_aimo1_mock_for_an_aimo1_preset(tmp_path, problems):
    config = load_config(preset="aimo1-t4x2", overrides=OVERRIDES)
    report = dry_run(config, problems, tmp_path / "out", engine_factory=boxing(42), show_progress=False)
    assert report.submission == tmp_path / "out" / "submission.csv"
    assert report.accuracy == pytest.approx(2 / 3)


def test_dry_run_uses_the_gateway_for_aimo3(tmp_path, problems):
    config = load_config(preset="cpu", overrides=OVERRIDES)
    report = dry_run(config, problems, tmp_path / "out", engine_factory=boxing(4), show_progress=False)
    assert report.submission.name == "submission.parquet" and report.accuracy == pytest.approx(1 / 3)


def test_dry_run_table_marks_fallbacks_and_puts_the_model_load_on_its_own_line(tmp_path, problems):
    answers = iter(["no box", "\\boxed{42}", "no box"] * 4)
    config = load_config(preset="cpu", overrides=["tir.num_candidates=1", "tir.max_rounds=1",
                                                  "tir.no_code_policy=keep", "tir.max_candidates=1"])
    report = dry_run(config, problems, tmp_path / "out", show_progress=False,
                     engine_factory=lambda c: FakeEngine(lambda req: next(answers)))
    table = format_table(report)
    rows = [line for line in table.splitlines() if line.startswith("q")]
    assert sum("0*" in row and "(fallback: no candidate answered)" in row for row in rows) == 2
    assert any(line.startswith("model load ") for line in table.splitlines())
    assert "fallback answers: 2 of 3 (no candidate answered ×2)" in table
    assert "!!! WARNING: 2 of 3 problems (67%) got the fallback answer 0" in table


# --- preset "auto": the competition and the machine decide --------------------------------------------------


@pytest.mark.parametrize(
    ("competition", "gpus", "chosen"),
    [
        ("aimo1", (T4, T4), "aimo1-t4x2"),
        ("aimo2", (L4,) * 4, "aimo2-l4x4"),
        ("aimo3", (H100,), "aimo3-h100"),
        ("aimo3", (T4, T4), "aimo1-t4x2"),  # the AIMO3 preset needs 75 GiB and bf16: the 2xT4 engine instead
        ("aimo1", (H100,), "aimo3-h100"),
        ("aimo1", (), "cpu"),
        ("aimo3", None, "aimo3-h100"),  # nothing tells what the machine has: the competition's own
        ("aimo3", (L4,), "aimo3-gptoss20b"),  # one 24 GB card: gpt-oss-20b rather than no GPU preset
        ("aimo2", (L4,), "aimo3-gptoss20b"),
    ],
)
def test_auto_picks_the_preset_for_the_competition_and_the_gpus(competition, gpus, chosen):
    cfg, lines = resolve_config("auto", competition, gpus)
    assert cfg.preset == chosen and cfg.competition == competition
    assert lines[0].startswith(f"aimo_kernel: competition {competition}; ")
    assert f"preset auto -> {chosen}" in lines[1] and lines[-1].startswith(f"aimo_kernel: running preset {chosen}")
    if competition == "aimo3":
        assert (cfg.vote.modulus, cfg.vote.max_answer) == (0, 99_999)
    else:
        assert (cfg.vote.modulus, cfg.vote.max_answer) == (1000, 999)


def test_a_spawned_servers_preset_must_fit_the_gpus_too():
    cfg, lines = resolve_config("aimo3-h100", "aimo3", (L4,))
    assert cfg.preset == "aimo3-gptoss20b" and cfg.tir.dialect == "harmony"
    assert any(line.startswith("!!!") and "aimo3-h100 needs 75 GiB per GPU" in line for line in lines)
    # someone else's server: this machine's GPUs do not matter
    cfg, lines = resolve_config("aimo3-h100", "aimo3", (L4,), overrides=["engine.server=['http://h:8000']"])
    assert cfg.preset == "aimo3-h100" and not any(line.startswith("!!!") for line in lines)


def test_a_named_preset_that_contradicts_the_machine_is_corrected_loudly():
    cfg, lines = resolve_config("aimo1-t4x2", "aimo3", (H100,))
    assert cfg.preset == "aimo3-h100" and cfg.competition == "aimo3" and cfg.vote.max_answer == 99_999
    loud = [line for line in lines if line.startswith("!!!")]
    assert loud and "aimo1-t4x2 needs 2 GPU(s), this machine has 1 × NVIDIA H100 80GB HBM3 80 GiB" in loud[0]
    # the right machine, the wrong competition: the engine stays, the answers follow the folder
    cfg, lines = resolve_config("aimo1-t4x2", "aimo3", (T4, T4))
    assert (cfg.preset, cfg.competition, cfg.vote.max_answer, cfg.engine.tensor_parallel_size) == \
        ("aimo1-t4x2", "aimo3", 99_999, 2)
    assert any("targets aimo1, the folder ships aimo3" in line for line in lines if line.startswith("!!!"))
    assert cfg.budget.total_seconds == 5 * 3600.0  # AIMO3's limit, not AIMO1's 9 h


def test_a_test_engine_is_not_checked_against_the_gpus():
    cfg, lines = resolve_config("aimo1-t4x2", "aimo1", (), overrides=["engine.backend=fake"])
    assert cfg.preset == "aimo1-t4x2" and not [line for line in lines if line.startswith("!!!")]


def test_run_prints_what_it_detected_and_chose(tmp_path, problems, workdir, monkeypatch, capsys):
    monkeypatch.setattr(machine, "detect_gpus", lambda: (T4, T4))
    run("auto", overrides=OVERRIDES, competition_dir=folder(tmp_path, "aimo1", problems), engine_factory=boxing(1))
    out = capsys.readouterr().out
    assert "aimo_kernel: competition aimo1; 2 × Tesla T4 15 GiB" in out
    assert "preset auto -> aimo1-t4x2 (the aimo1 preset)" in out and "aimo1 API from" in out


def test_gpu_detection_never_fails(monkeypatch):
    assert machine.parse_nvidia_smi("Tesla T4, 15360\nTesla T4, 15360\n") == (T4, T4)
    assert machine.parse_nvidia_smi("") == ()
    monkeypatch.setattr(machine.shutil, "which", lambda name: None)
    monkeypatch.setattr(machine.importlib.util, "find_spec", lambda name: None)
    assert machine.detect_gpus() is None


def test_aimo2_integer_ids_come_back_with_their_dtype_even_when_every_answer_is_the_fallback(tmp_path):
    path = tmp_path / "int.csv"
    path.write_text("id,problem\n101,x\n102,y\n103,z\n")
    config = load_config(preset="aimo2-l4x4", overrides=OVERRIDES)

    def broken(cfg):
        raise RuntimeError("no GPU")

    report = dry_run(config, path, tmp_path / "out", engine_factory=broken, show_progress=False)
    sub = pl.read_parquet(report.submission)  # the AIMO2 mock checks every returned id and its dtype
    assert sub["id"].dtype == pl.Int64 and sorted(sub["id"]) == [101, 102, 103] and set(sub["answer"]) == {0}
    assert [r.fallback_reason for r in report.records] == ["model not loaded"] * 3
