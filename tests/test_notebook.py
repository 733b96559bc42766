"""The submission notebook: thin, and executed headlessly (nbclient) with preset="auto" against the AIMO1 and
AIMO3 mock competition APIs."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pandas as pd
import polars as pl
import pytest

from aimo_kernel.run.mock_api import write_competition_folder

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "aimo-kernel-submission.ipynb"


def code_cells() -> list[str]:
    return [c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"]


def test_the_notebook_is_thin():
    code = "\n".join(code_cells())
    lines = [line for line in code.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert len(lines) <= 30
    tree = ast.parse(code)
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Lambda))]
    assert "--no-index" in code and "--find-links" in code and 'find_spec("aimo_kernel") is None' in code
    assert "aimo_kernel.run.kaggle.run(preset=" in code and 'os.environ.get("AIMO_PRESET", "auto")' in code


def execute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Path:
    from nbclient import NotebookClient

    work = tmp_path / "working"
    work.mkdir()
    monkeypatch.setenv("AIMO_WHEELS_DIR", str(tmp_path / "no-wheels"))  # absent: nothing to install
    monkeypatch.delenv("KAGGLE_IS_COMPETITION_RERUN", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "answered" in outputs and "fallback answers:" in outputs, outputs
    return work, outputs


@pytest.fixture
def problems(tmp_path):
    path = tmp_path / "problems.csv"
    path.write_text("id,problem,answer\nn1,What is 6*7?,42\nn2,What is 2+2?,4\n")
    return path


@pytest.mark.parametrize("api", ["aimo1", "aimo3"])
def test_notebook_runs_the_mock_with_preset_auto_and_the_fake_engine(tmp_path, problems, monkeypatch, api):
    comp = write_competition_folder(tmp_path / "comp", api, problems)
    monkeypatch.delenv("AIMO_PRESET", raising=False)  # the notebook's own default: auto
    backend = "fake" if api == "aimo1" else "fake-async"
    work, outputs = execute(tmp_path, monkeypatch, {"AIMO_COMPETITION_DIR": str(comp),
                                                    "AIMO_SET": f"engine.backend={backend};tir.num_candidates=2"})
    assert f"aimo_kernel: competition {api}; " in outputs and "aimo_kernel: preset auto -> " in outputs
    if api == "aimo1":
        sub = pd.read_csv(work / "submission.csv")
    else:
        sub = pl.read_parquet(work / "submission.parquet").to_pandas()
    assert sorted(sub["id"]) == ["n1", "n2"] and set(sub["answer"]) == {0}


@pytest.mark.vllm
def test_notebook_runs_the_aimo3_mock_with_the_tiny_model_on_vllm(tmp_path, problems, monkeypatch):
    # The one place the suite loads vLLM in a notebook kernel (~30-60 s of CPU); auto picks the cpu preset here.
    comp = write_competition_folder(tmp_path / "comp", "aimo3", problems)
    monkeypatch.delenv("AIMO_PRESET", raising=False)
    work, outputs = execute(tmp_path, monkeypatch, {
        "AIMO_COMPETITION_DIR": str(comp),
        "AIMO_SET": "tir.num_candidates=2;tir.max_rounds=1;sampling.max_new_tokens=32",
    })
    assert "preset auto -> cpu" in outputs
    sub = pl.read_parquet(work / "submission.parquet")
    assert sorted(sub["id"]) == ["n1", "n2"] and sub["answer"].dtype == pl.Int64
    assert all(0 <= a <= 99_999 for a in sub["answer"])
