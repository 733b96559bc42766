"""The mock competition APIs enforce the real ones' rules, with the same error kinds."""

from __future__ import annotations

import importlib
import json
import sys
import time

import pandas as pd
import polars as pl
import pytest

from aimo_kernel import mock_api
from aimo_kernel.mock_api import (
    AIMO1_PENDING_MESSAGE,
    Aimo1Env,
    Aimo1Error,
    GatewayError,
    GatewayErrorType,
    LocalGateway,
    aimo1_make_env,
    write_competition_folder,
)


@pytest.fixture
def csv_path(tmp_path):
    path = tmp_path / "test.csv"
    frame = pl.DataFrame({"id": ["a", "b", "c", "d"], "problem": ["p1", "p2", "p3", "p4"], "answer": [1, 2, 3, 4]})
    frame.write_csv(path)
    return path


@pytest.fixture
def isolated_imports(monkeypatch):
    """The fake packages are imported from a temp folder: leave sys.path and sys.modules as they were."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def _echo():
    def predict(id_, problem, answer=None):
        return pl.DataFrame({"id": id_, "answer": [7]})

    return predict


echo = _echo()  # a plain function named predict, as the gateway wants


# --- kaggle_evaluation style (AIMO2 / AIMO3) -------------------------------------------------------------------


def test_serves_every_row_once_shuffled_as_one_row_series(csv_path, tmp_path):
    seen = []

    def predict(id_, problem, answer):
        assert all(isinstance(s, pl.Series) and len(s) == 1 for s in (id_, problem, answer))
        assert (id_.name, problem.name, answer.name) == ("id", "problem", "answer")  # column order
        seen.append(id_.item(0))
        return pl.DataFrame({"id": id_, "answer": [answer.item(0) * 10]})

    out = LocalGateway(predict, seed=3).run(csv_path, tmp_path / "out")
    assert sorted(seen) == ["a", "b", "c", "d"] and seen != ["a", "b", "c", "d"]
    sub = pl.read_parquet(out)
    assert out.name == "submission.parquet"
    assert dict(zip(sub["id"], sub["answer"])) == {"a": 10, "b": 20, "c": 30, "d": 40}


def test_pandas_frames_are_accepted(csv_path, tmp_path):
    def predict(id_, problem, answer):
        return pd.DataFrame({"id": [id_.item(0)], "answer": [5]})

    LocalGateway(predict).run(csv_path, tmp_path)


class Holder:
    def predict(self, id_, problem, answer=None):
        return pl.DataFrame({"id": id_, "answer": [1]})


def test_endpoint_registration_is_checked_like_define_server(csv_path, tmp_path):
    with pytest.raises(ValueError, match="must be named"):
        LocalGateway(lambda id_, problem: 0)
    with pytest.raises(ValueError, match="must be functions"):
        LocalGateway(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bound methods"):
        LocalGateway(Holder().predict, competition="aimo3")
    LocalGateway(Holder().predict, competition="aimo2").run(csv_path, tmp_path)  # AIMO2 registers it by name


def test_a_function_not_named_predict_is_a_missing_endpoint(csv_path, tmp_path):
    def solve(id_, problem, answer):
        return pl.DataFrame({"id": id_, "answer": [1]})

    with pytest.raises(GatewayError) as err:
        LocalGateway(solve).run(csv_path, tmp_path)
    assert err.value.code == "SERVER_MISSING_ENDPOINT"
    assert err.value.error_type is GatewayErrorType.SERVER_MISSING_ENDPOINT


@pytest.mark.parametrize(
    ("competition", "make", "message"),
    [
        ("aimo3", lambda id_: 5, "got int"),
        ("aimo2", lambda id_: 5, "got int"),
        ("aimo3", lambda id_: None, "got NoneType"),
        ("aimo3", lambda id_: pl.DataFrame({"id": ["zzz"], "answer": [5]}), "does not match"),
        ("aimo3", lambda id_: pl.DataFrame({"id": id_.cast(pl.Categorical), "answer": [5]}), "does not match"),
        ("aimo3", lambda id_: pl.DataFrame({"id": id_, "answer": [100_000]}), "integer in 0..99999"),
        ("aimo2", lambda id_: pl.DataFrame({"id": id_, "answer": [1000]}), "integer in 0..999"),
        ("aimo3", lambda id_: pl.DataFrame({"id": id_, "answer": ["12"]}), "integer in 0..99999"),
        ("aimo3", lambda id_: pl.DataFrame({"id": [id_.item(0)] * 2, "answer": [1, 2]}), "one row"),
        ("aimo3", lambda id_: pl.DataFrame({"id": id_}), "one row with an 'answer' column"),
        ("aimo2", lambda id_: pl.DataFrame({"answer": [5]}), "missing column id"),
    ],
)
def test_invalid_returns_are_rejected(csv_path, tmp_path, competition, make, message):
    def predict(id_, problem, answer):
        return make(id_)

    with pytest.raises(GatewayError) as err:
        LocalGateway(predict, competition=competition).run(csv_path, tmp_path)
    assert err.value.code == "INVALID_SUBMISSION" and message in str(err.value)


def test_aimo3_accepts_a_frame_without_id(csv_path, tmp_path):
    def predict(id_, problem, answer):
        return pl.DataFrame({"answer": [3]})

    out = LocalGateway(predict, competition="aimo3").run(csv_path, tmp_path)
    assert sorted(pl.read_parquet(out)["id"]) == ["a", "b", "c", "d"]


def test_an_exception_in_predict_fails_the_run_with_its_type(csv_path, tmp_path):
    def predict(id_, problem, answer):
        raise KeyError("boom")

    with pytest.raises(GatewayError) as err:
        LocalGateway(predict).run(csv_path, tmp_path)
    assert err.value.code == "SERVER_RAISED_EXCEPTION" and "KeyError" in str(err.value)


def test_only_the_first_call_has_no_deadline(csv_path, tmp_path):
    calls = []

    def predict(id_, problem, answer):
        calls.append(1)
        time.sleep(0.3 if len(calls) in (1, 3) else 0)
        return pl.DataFrame({"id": id_, "answer": [0]})

    with pytest.raises(GatewayError) as err:
        LocalGateway(predict, call_deadline_s=0.2).run(csv_path, tmp_path)
    assert err.value.code == "GRPC_DEADLINE_EXCEEDED" and len(calls) == 3


def test_default_deadlines_are_the_competitions():
    assert LocalGateway(echo, competition="aimo2").call_deadline_s == 30 * 60
    assert LocalGateway(echo, competition="aimo3").call_deadline_s == 9 * 3600


def test_one_pass_only(csv_path, tmp_path):
    gateway = LocalGateway(echo)
    gateway.run(csv_path, tmp_path)
    with pytest.raises(GatewayError, match="once") as err:
        gateway.run(csv_path, tmp_path)
    assert err.value.code == "GATEWAY_RAISED_EXCEPTION"


def test_integer_ids_keep_their_dtype_and_a_string_id_is_refused(tmp_path):
    path = tmp_path / "int.csv"
    path.write_text("id,problem\n7,x\n8,y\n")

    def predict(id_, problem):
        return pl.DataFrame({"id": id_, "answer": [1]})

    out = LocalGateway(predict).run(path, tmp_path)
    assert pl.read_parquet(out)["id"].dtype == pl.Int64

    def predict(id_, problem):  # noqa: F811 - the same endpoint name, returning the id as a string
        return pl.DataFrame({"id": [str(id_.item(0))], "answer": [1]})

    with pytest.raises(GatewayError, match="INVALID_SUBMISSION"):
        LocalGateway(predict).run(path, tmp_path)


# --- the fake kaggle_evaluation package in a competition folder --------------------------------------------------


def server_class(folder, api):
    sys.path.insert(0, str(folder))
    n = api[-1]
    module = importlib.import_module(f"kaggle_evaluation.aimo_{n}_inference_server")
    return getattr(module, f"AIMO{n}InferenceServer")


@pytest.mark.parametrize("api", ["aimo2", "aimo3"])
def test_folder_layout_imports_like_kaggle(tmp_path, csv_path, isolated_imports, monkeypatch, api):
    folder = write_competition_folder(tmp_path / "comp", api, csv_path)
    server = server_class(folder, api)(echo)
    base = importlib.import_module("kaggle_evaluation.core.base_gateway")
    assert base.GatewayRuntimeError is GatewayError and base.GatewayRuntimeErrorType.INVALID_SUBMISSION.value == 6
    monkeypatch.chdir(tmp_path)
    server.run_local_gateway((str(csv_path),))
    assert pl.read_parquet(tmp_path / "submission.parquet").height == 4
    with pytest.raises(ValueError, match="must be named"):
        server_class(folder, api)(lambda id_, problem: 0)


def test_serve_off_a_rerun_returns_at_once(tmp_path, csv_path, isolated_imports, monkeypatch):
    monkeypatch.delenv("KAGGLE_IS_COMPETITION_RERUN", raising=False)
    monkeypatch.chdir(tmp_path)
    server = server_class(write_competition_folder(tmp_path / "comp", "aimo3", csv_path), "aimo3")(echo)
    server.serve()
    assert server.started_at is not None and server.gateway is None
    assert not (tmp_path / "submission.parquet").exists()


def test_serve_on_a_rerun_runs_the_gateway_and_writes_result_json(tmp_path, csv_path, isolated_imports, monkeypatch):
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")
    monkeypatch.chdir(tmp_path)
    cls = server_class(write_competition_folder(tmp_path / "comp", "aimo3", csv_path), "aimo3")
    cls(echo).serve()
    assert json.loads((tmp_path / "result.json").read_text()) == {"Succeeded": True}
    assert pl.read_parquet(tmp_path / "submission.parquet").height == 4

    def predict(id_, problem, answer):
        raise ZeroDivisionError("x")

    cls(predict).serve()
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["Succeeded"] is False and result["ErrorName"] == "SERVER_RAISED_EXCEPTION"
    assert "ZeroDivisionError" in result["ErrorDetails"]


def test_a_late_server_never_started(tmp_path, csv_path, isolated_imports, monkeypatch):
    monkeypatch.setattr(mock_api, "STARTUP_LIMIT_SECONDS", -1.0)
    monkeypatch.chdir(tmp_path)
    cls = server_class(write_competition_folder(tmp_path / "comp", "aimo3", csv_path), "aimo3")
    with pytest.warns(RuntimeWarning, match="before server startup"):
        cls(echo).run_local_gateway()
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")
    cls(echo).serve()
    assert json.loads((tmp_path / "result.json").read_text())["ErrorName"] == "SERVER_NEVER_STARTED"


# --- AIMO1: the aimo module ---------------------------------------------------------------------------------------


def test_aimo1_iterates_shuffled_one_row_frames_and_writes_submission_csv(csv_path, tmp_path):
    env = Aimo1Env(csv_path, out_dir=tmp_path, seed=1)
    seen = []
    for test, sample in env.iter_test():
        assert list(test.columns) == ["id", "problem"] and list(sample.columns) == ["id", "answer"]
        assert len(test) == len(sample) == 1 and test["id"].iloc[0] == sample["id"].iloc[0]
        seen.append(test["id"].iloc[0])
        env.predict(sample.assign(answer=len(seen)))
    assert sorted(seen) == ["a", "b", "c", "d"] and seen != ["a", "b", "c", "d"]
    sub = pd.read_csv(tmp_path / "submission.csv")
    assert list(sub.columns) == ["id", "answer"] and list(sub["id"]) == seen and list(sub["answer"]) == [1, 2, 3, 4]


def test_aimo1_iter_test_only_once(csv_path, tmp_path):
    env = Aimo1Env(csv_path, out_dir=tmp_path)
    env.iter_test()
    with pytest.raises(Aimo1Error, match="only be called once"):
        env.iter_test()


def test_aimo1_next_problem_before_predict_prints_and_yields_none(csv_path, tmp_path, capsys):
    it = Aimo1Env(csv_path, out_dir=tmp_path).iter_test()
    assert next(it) is not None
    assert next(it) is None
    assert AIMO1_PENDING_MESSAGE in capsys.readouterr().out


def test_aimo1_predict_misuse_is_refused(csv_path, tmp_path):
    env = Aimo1Env(csv_path, out_dir=tmp_path)
    with pytest.raises(Aimo1Error, match="from `iter_test\\(\\)` first"):
        env.predict(pd.DataFrame({"id": ["a"], "answer": [1]}))
    it = env.iter_test()
    _, sample = next(it)
    for bad, message in [
        (5, "must provide a DataFrame"),
        (sample.assign(id="zz"), "not the current problem"),
        (sample.assign(answer=1000), "0..999"),
        (sample.assign(answer=1.5), "0..999"),
        (pd.concat([sample, sample]), "one row"),
    ]:
        with pytest.raises(Aimo1Error, match=message):
            env.predict(bad)
    env.predict(sample)
    for _, sample in it:
        env.predict(sample)
    with pytest.raises(Aimo1Error, match="full test set"):
        env.predict(sample)


def test_aimo1_make_env_only_once(csv_path):
    make_env = aimo1_make_env(csv_path)
    make_env()
    with pytest.raises(Aimo1Error, match="once"):
        make_env()


def test_unknown_api_for_a_folder(tmp_path, csv_path):
    with pytest.raises(ValueError, match="unknown competition API"):
        write_competition_folder(tmp_path, "aimo9", csv_path)
