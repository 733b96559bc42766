"""The local AIMO3-style gateway enforces the competition API's rules."""

from __future__ import annotations

import time

import pandas as pd
import polars as pl
import pytest

from aimo_kernel.mock_api import GatewayError, LocalGateway


@pytest.fixture
def csv_path(tmp_path):
    path = tmp_path / "test.csv"
    frame = pl.DataFrame({"id": ["a", "b", "c", "d"], "problem": ["p1", "p2", "p3", "p4"], "answer": [1, 2, 3, 4]})
    frame.write_csv(path)
    return path


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


def test_endpoint_must_be_a_function_named_predict():
    def solve(id_, problem):
        return 0

    with pytest.raises(GatewayError, match="INVALID_ENDPOINT"):
        LocalGateway(solve)
    with pytest.raises(GatewayError, match="INVALID_ENDPOINT"):
        LocalGateway(lambda id_, problem: 0)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda id_: 5, "got int"),
        (lambda id_: pl.DataFrame({"id": ["zzz"], "answer": [5]}), "does not match"),
        (lambda id_: pl.DataFrame({"id": id_.cast(pl.Categorical), "answer": [5]}), "does not match"),
        (lambda id_: pl.DataFrame({"id": id_, "answer": [100_000]}), "integer in 0..99999"),
        (lambda id_: pl.DataFrame({"id": id_, "answer": ["12"]}), "integer in 0..99999"),
        (lambda id_: pl.DataFrame({"id": [id_.item(0)] * 2, "answer": [1, 2]}), "one row"),
        (lambda id_: pl.DataFrame({"id": id_}), "one row with an 'answer' column"),
    ],
)
def test_invalid_returns_are_rejected(csv_path, tmp_path, make, message):
    def predict(id_, problem, answer):
        return make(id_)

    with pytest.raises(GatewayError) as err:
        LocalGateway(predict).run(csv_path, tmp_path)
    assert err.value.code == "INVALID_SUBMISSION" and message in str(err.value)


def test_an_exception_in_predict_fails_the_run(csv_path, tmp_path):
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
    assert err.value.code == "TIMEOUT" and len(calls) == 3


def test_one_pass_only(csv_path, tmp_path):
    def predict(id_, problem, answer):
        return pl.DataFrame({"id": id_, "answer": [0]})

    gateway = LocalGateway(predict)
    gateway.run(csv_path, tmp_path)
    with pytest.raises(GatewayError, match="once"):
        gateway.run(csv_path, tmp_path)


def test_integer_ids_keep_their_dtype(tmp_path):
    path = tmp_path / "int.csv"
    path.write_text("id,problem\n7,x\n8,y\n")

    def predict(id_, problem):
        return pl.DataFrame({"id": id_, "answer": [1]})

    out = LocalGateway(predict).run(path, tmp_path)
    assert pl.read_parquet(out)["id"].dtype == pl.Int64
