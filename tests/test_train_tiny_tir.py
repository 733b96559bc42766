"""The tiny model's training script (tools/train_tiny_tir.py) end to end, on a handful of examples."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import train_tiny_tir  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "model"
    assert train_tiny_tir.main(["--out", str(out), "--examples", "300", "--minutes", "0.1", "--threads", "1"]) == 0
    return out


def test_writes_a_loadable_checkpoint(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    names = {p.name for p in trained.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training.json"} <= names
    assert not trained.with_name("model.tmp").exists()
    model = AutoModelForCausalLM.from_pretrained(trained)
    assert model.config.head_dim >= 32
    tok = AutoTokenizer.from_pretrained(trained)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt == "### Problem: What is 2+2?\n### Solution: "
    meta = json.loads((trained / "training.json").read_text())
    assert meta["steps"] >= 1 and meta["final_loss"] > 0


def test_loss_targets_are_the_solution_without_output_bodies():
    text, start = train_tiny_tir.chat_text("P?", "Try.\n```python\nprint(1)\n```\n```output\n1\n```\nSo 1.")
    spans = train_tiny_tir.masked_spans(text, start)
    assert spans[0] == (0, start)
    body = text.index("```output\n") + len("```output\n")
    assert spans[1] == (body, body + 2)  # "1\n": what the sandbox wrote is context, not a target
