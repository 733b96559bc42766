"""The mock competition APIs are as strict as the real gateways (kaggle_evaluation 0.3.0 / 0.9.0), same error kinds."""

from __future__ import annotations

import functools
import importlib
import json
import sys
import threading
import time

import numpy as np
import pandas as pd
import polars as pl
import pytest

from aimo_kernel.run import mock_api
from aimo_kernel.run.mock_api import (
    AIMO1_PENDING_MESSAGE,
    Aimo1Env,
    Aimo1Error,
    GatewayError,
    GatewayErrorType,
    LocalGateway,
    MockInferenceServer,
    RerunFinished,
    aimo1_make_env,
    write_competition_folder,
)
from aimo_kernel.run.problems import ProblemSetError


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


class CallableObject:
    __name__ = "predict"

    def __call__(self, id_, problem, answer=None):
        return pl.DataFrame({"id": id_, "answer": [1]})


def _named_partial():
    part = functools.partial(lambda id_, problem, answer=None: pl.DataFrame({"id": id_, "answer": [1]}))
    part.__name__ = "predict"  # type: ignore[attr-defined]
    return part


@pytest.mark.parametrize(("listener", "message"),
                         [(Holder().predict, "plain functions"), (CallableObject(), "plain functions"),
                          (_named_partial(), "plain functions"), (42, "plain functions"),
                          (lambda id_, p: 0, "must be named")],
                         ids=["bound-method", "callable-object", "partial", "int", "lambda"])
def test_aimo3_takes_only_a_plain_named_function(listener, message):
    with pytest.raises(ValueError, match=message):
        LocalGateway(listener, competition="aimo3")


def test_aimo2_takes_a_named_callable(csv_path, tmp_path):
    with pytest.raises(ValueError, match="must be named"):
        LocalGateway(lambda id_, problem: 0, competition="aimo2")
    with pytest.raises(ValueError, match="must be functions"):
        LocalGateway(42, competition="aimo2")  # type: ignore[arg-type]
    LocalGateway(Holder().predict, competition="aimo2").run(csv_path, tmp_path)  # registered by its name


def test_aimo2_server_takes_exactly_one_listener():
    class AIMO2InferenceServer(MockInferenceServer):
        competition = "aimo2"

    def other(id_, problem):
        return None

    with pytest.raises(TypeError, match="exactly one endpoint listener"):
        AIMO2InferenceServer(echo, other)
    with pytest.raises(ValueError, match="at least one"):
        AIMO2InferenceServer()
    assert set(AIMO2InferenceServer(echo).endpoints) == {"predict"}


def test_predict_runs_on_the_servers_worker_thread(csv_path, tmp_path):
    threads = set()

    def predict(id_, problem, answer):
        threads.add(threading.current_thread().name)
        return pl.DataFrame({"id": id_, "answer": [1]})

    LocalGateway(predict).run(csv_path, tmp_path)
    assert threads == {"grpc-worker"} and threading.current_thread() is threading.main_thread()


def test_a_function_not_named_predict_is_a_missing_endpoint(csv_path, tmp_path):
    def solve(id_, problem, answer):
        return pl.DataFrame({"id": id_, "answer": [1]})

    with pytest.raises(GatewayError) as err:
        LocalGateway(solve).run(csv_path, tmp_path)
    assert err.value.code == "SERVER_MISSING_ENDPOINT"
    assert err.value.error_type is GatewayErrorType.SERVER_MISSING_ENDPOINT


@pytest.mark.parametrize(
    ("competition", "make", "code", "message"),
    [
        ("aimo3", lambda id_: 5, "GATEWAY_RAISED_EXCEPTION", "got int"),
        ("aimo2", lambda id_: 5, "GATEWAY_RAISED_EXCEPTION", "got int"),
        ("aimo3", lambda id_: np.int64(5), "GATEWAY_RAISED_EXCEPTION", "got int64"),
        ("aimo3", lambda id_: pl.Series("answer", [5]), "GATEWAY_RAISED_EXCEPTION", "got Series"),
        ("aimo3", lambda id_: None, "INVALID_SUBMISSION", "returned None"),
        ("aimo2", lambda id_: pl.DataFrame({"id": ["zzz"], "answer": [5]}), "INVALID_SUBMISSION", "does not match"),
        ("aimo3", lambda id_: pl.DataFrame({"id": id_.cast(pl.Categorical), "answer": [5]}), "INVALID_SUBMISSION",
         "aimo_kernel's own check"),
        ("aimo3", lambda id_: pl.DataFrame({"id": [id_.item(0)] * 2, "answer": [1, 2]}), "INVALID_SUBMISSION",
         "one row"),
        ("aimo3", lambda id_: pl.DataFrame({"id": id_}), "INVALID_SUBMISSION", "one row with an 'answer' column"),
        ("aimo2", lambda id_: pl.DataFrame({"answer": [5]}), "INVALID_SUBMISSION", "Prediction missing column id"),
    ],
)
def test_invalid_returns_are_rejected_like_the_real_gateway(csv_path, tmp_path, competition, make, code, message):
    def predict(id_, problem, answer):
        return make(id_)

    with pytest.raises(GatewayError) as err:
        LocalGateway(predict, competition=competition).run(csv_path, tmp_path)
    assert err.value.code == code and message in str(err.value)


@pytest.mark.parametrize(
    ("competition", "answer"),
    [("aimo3", 100_000), ("aimo2", 1000), ("aimo3", "12"), ("aimo3", 1.5), ("aimo2", -1)],
)
def test_answers_outside_the_rule_are_refused_by_our_own_check(csv_path, tmp_path, competition, answer):
    # The real gateways accept these and score them wrong; the mock refuses them and says it is its own rule.
    def predict(id_, problem, answer_):
        return pl.DataFrame({"id": id_, "answer": [answer]})

    with pytest.raises(GatewayError) as err:
        LocalGateway(predict, competition=competition).run(csv_path, tmp_path)
    assert err.value.code == "INVALID_SUBMISSION"
    assert "aimo_kernel's own check, stricter than Kaggle's" in str(err.value)


def test_rows_with_and_without_an_id_in_one_run_are_rejected(csv_path, tmp_path):
    calls = []

    def predict(id_, problem, answer):
        calls.append(1)
        return pl.DataFrame({"id": id_, "answer": [1]}) if len(calls) == 1 else pl.DataFrame({"answer": [1]})

    with pytest.raises(GatewayError, match="Inconsistent prediction column counts") as err:
        LocalGateway(predict, competition="aimo3").run(csv_path, tmp_path)
    assert err.value.code == "INVALID_SUBMISSION" and len(calls) == 2


def test_extra_returned_columns_are_kept(csv_path, tmp_path):
    def predict(id_, problem, answer):
        return pl.DataFrame({"id": id_, "answer": [1], "note": ["x"]})

    sub = pl.read_parquet(LocalGateway(predict).run(csv_path, tmp_path))
    assert sub.columns == ["id", "answer", "note"] and sub.height == 4


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


@pytest.mark.parametrize(("competition", "code"),
                         [("aimo2", "SERVER_CONNECTION_FAILED"), ("aimo3", "GRPC_DEADLINE_EXCEEDED")])
def test_a_late_call_fails_at_its_deadline_while_predict_still_runs(csv_path, tmp_path, competition, code):
    calls, release = [], threading.Event()

    def predict(id_, problem, answer):
        calls.append(time.monotonic())
        if len(calls) == 1:
            time.sleep(0.4)  # the first call has no deadline: the model loads there
        elif len(calls) == 3:
            release.wait(10.0)  # hangs until the test lets it go
        return pl.DataFrame({"id": id_, "answer": [0]})

    t0 = time.monotonic()
    with pytest.raises(GatewayError) as err:
        LocalGateway(predict, competition=competition, call_deadline_s=0.3).run(csv_path, tmp_path)
    failed_after = time.monotonic() - calls[2]
    assert err.value.code == code and len(calls) == 3
    assert 0.25 <= failed_after < 1.0 and not release.is_set()  # at the deadline, predict still running
    assert time.monotonic() - t0 < 2.0
    release.set()


def test_default_deadlines_are_the_competitions():
    assert LocalGateway(echo, competition="aimo2").call_deadline_s == 30 * 60
    assert LocalGateway(echo, competition="aimo3").call_deadline_s == 9 * 3600


def test_one_pass_only(csv_path, tmp_path):
    gateway = LocalGateway(echo)
    gateway.run(csv_path, tmp_path)
    with pytest.raises(GatewayError, match="once") as err:
        gateway.run(csv_path, tmp_path)
    assert err.value.code == "GATEWAY_RAISED_EXCEPTION"


def test_the_csv_is_read_as_the_gateway_reads_it(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,problem\n1,x\n\n2,y\n")  # pl.read_csv would pass a row of nulls here
    with pytest.raises(ProblemSetError, match="line 3: blank line"):
        LocalGateway(echo).run(path, tmp_path)
    path.write_text("id,problem\n007,x\n8,y\n")
    seen = []

    def predict(id_, problem):
        seen.append((id_.dtype, id_.item(0)))
        return pl.DataFrame({"id": id_, "answer": [1]})

    LocalGateway(predict, seed=0).run(path, tmp_path)
    assert sorted(seen) == [(pl.Int64, 7), (pl.Int64, 8)]  # schema inferred like pl.read_csv: 007 is 7


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
        LocalGateway(predict, competition="aimo2").run(path, tmp_path)


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


def test_serve_on_a_rerun_runs_the_gateway_and_never_returns(tmp_path, csv_path, isolated_imports, monkeypatch):
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")
    monkeypatch.chdir(tmp_path)
    cls = server_class(write_competition_folder(tmp_path / "comp", "aimo3", csv_path), "aimo3")
    after = []
    with pytest.raises(RerunFinished):
        cls(echo).serve()
        after.append("ran")  # on Kaggle, code after serve() never runs
    assert after == [] and not issubclass(RerunFinished, Exception)
    assert json.loads((tmp_path / "result.json").read_text()) == {"Succeeded": True}
    assert pl.read_parquet(tmp_path / "submission.parquet").height == 4

    def predict(id_, problem, answer):
        raise ZeroDivisionError("x")

    with pytest.raises(RerunFinished):
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
    with pytest.raises(RerunFinished):
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
