"""The Kaggle shim under both mock APIs, on the fake engine (no vLLM here)."""

from __future__ import annotations

import json
import logging
import sys

import pandas as pd
import polars as pl
import pytest

from aimo_kernel import kaggle, mock_api
from aimo_kernel.config import load_config
from aimo_kernel.engine.fake import FakeEngine, scripted
from aimo_kernel.kaggle import ShimError, detect_api, find_competition, run, to_competition_range
from aimo_kernel.mock_api import write_competition_folder
from aimo_kernel.runner import Runner, dry_run

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


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """cwd is Kaggle's working folder; the fake API packages leave sys.path and sys.modules as they were."""
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
    result = run("cpu", overrides=OVERRIDES, competition_dir=folder(tmp_path, "aimo3", problems),
                 engine_factory=boxing(7))
    assert result.mode == "serve" and result.submission is None and "gateway" in result.summary()
    assert json.loads((workdir / "result.json").read_text()) == {"Succeeded": True}
    assert set(pl.read_parquet(workdir / "submission.parquet")["answer"]) == {7}


def test_a_broken_engine_still_answers_every_problem(tmp_path, problems, workdir):
    def broken(cfg):
        raise RuntimeError("CUDA out of memory")

    result = run("cpu", overrides=OVERRIDES, competition_dir=folder(tmp_path, "aimo3", problems),
                 engine_factory=broken)
    assert set(pl.read_parquet(result.submission)["answer"]) == {0}
    assert all("CUDA out of memory" in r.error for r in result.records)


def test_predict_never_raises(tmp_path, problems, workdir, monkeypatch, caplog):
    def explode(self, *args, **kwargs):
        raise MemoryError("boom")

    monkeypatch.setattr(Runner, "answer", explode)
    with caplog.at_level(logging.ERROR, logger="aimo_kernel.kaggle"):
        result = run("cpu", overrides=OVERRIDES, competition_dir=folder(tmp_path, "aimo3", problems))
    assert set(pl.read_parquet(result.submission)["answer"]) == {0}
    assert "MemoryError: boom; answering the fallback 0" in caplog.text
    # called with no runner set up, or with odd arguments: still a valid one-row frame
    monkeypatch.setattr(kaggle, "_SESSION", None)
    frame = kaggle.predict(pl.Series("id", [5]), pl.Series("problem", ["x"]))
    assert frame.to_dicts() == [{"id": 5, "answer": 0}] and frame["id"].dtype == pl.Int64
    assert kaggle.predict(None, None).to_dicts() == [{"answer": 0}]


def test_overrides_come_from_the_environment(tmp_path, problems, workdir, monkeypatch):
    monkeypatch.setenv(kaggle.ENV_OVERRIDES, "tir.num_candidates=1; vote.fallback_answer=9")
    monkeypatch.setenv(kaggle.ENV_COMPETITION_DIR, str(folder(tmp_path, "aimo3", problems)))

    def broken(cfg):
        assert cfg.tir.num_candidates == 1
        raise RuntimeError("no engine")

    result = run("cpu", engine_factory=broken)
    assert set(pl.read_parquet(result.submission)["answer"]) == {9}


# --- AIMO1: the aimo module ---------------------------------------------------------------------------------------


def test_aimo1_iterate_and_predict(tmp_path, problems, workdir, caplog):
    with caplog.at_level(logging.WARNING, logger="aimo_kernel.kaggle"):
        result = run("cpu", overrides=OVERRIDES, competition_dir=folder(tmp_path, "aimo1", problems),
                     engine_factory=boxing(1042))
    assert "ships the aimo1 API but preset cpu targets aimo3" in caplog.text
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
