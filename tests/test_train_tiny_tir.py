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


def test_chat_tools_targets_are_the_calls_and_the_answer_not_the_tool_turns():
    from aimo_kernel.solve.chat_tools import TOOL_TURN

    solution = ('Try.\n\n<tool_call>\n{"name": "python", "arguments": {"code": "print(1)"}}\n</tool_call>'
                f"{TOOL_TURN[0]}1{TOOL_TURN[1]}So $\\boxed{{1}}$.")
    text, start = train_tiny_tir.chat_text("P?", solution, "chat-tools")
    assert text.startswith("<|im_start|>user\n") and text[:start].endswith("<|im_start|>assistant\n")
    spans = train_tiny_tir.masked_spans(text, start, "chat-tools")
    turn = text.index(TOOL_TURN[0])
    assert spans == [(0, start), (turn, turn + len(TOOL_TURN[0]) + 1 + len(TOOL_TURN[1]))]  # the whole tool turn
    targets = "".join(ch for i, ch in enumerate(text) if not any(a <= i < b for a, b in spans))
    assert targets == solution.replace(f"{TOOL_TURN[0]}1{TOOL_TURN[1]}", "")  # the call, the reasoning, the box


def test_chat_tools_training_writes_a_chatml_tokenizer_whose_template_gives_the_dialects_prompt(tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "tools-model"
    assert train_tiny_tir.main(["--out", str(out), "--examples", "200", "--minutes", "0.05", "--threads", "1",
                                "--dialect", "chat-tools"]) == 0
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>" in tok.all_special_tokens
    for tag in ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"):
        ids = tok.encode(tag, add_special_tokens=False)
        assert len(ids) == 1 and tag not in tok.all_special_tokens  # one ordinary added token: kept when decoding
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == tok.eos_token_id
    assert json.loads((out / "training.json").read_text())["dialect"] == "chat-tools"


def test_the_shared_prefix_gives_the_same_loss_and_gradients_as_the_whole_text():
    import torch
    from tokenizers import Tokenizer

    from aimo_kernel.models import resolve_model

    tok = Tokenizer.from_file(str(resolve_model("builtin:tiny-tir") / "tokenizer.json"))
    model = train_tiny_tir.build_model(tok, seed=0)
    common = list(range(5, 45))  # 40 context tokens every row starts with
    rows = [(common + [7, 8, 9, 10], [-100] * 40 + [7, 8, 9, 10]), (common + [11, 12], [-100] * 40 + [11, 12])]
    n = train_tiny_tir.shared_prefix(rows)
    assert n == 39  # the 40th token predicts the first target: its logits must be computed
    assert train_tiny_tir.shared_prefix([*rows, ([5, 6, 1, 2], [-100, -100, -100, 2])]) == 2  # a row that differs
    assert train_tiny_tir.shared_prefix([*rows, (common + [3], [-100] * 30 + [1] * 11)]) == 29  # targets end it

    def padded(seqs, fill):
        width = max(len(x) for x in seqs)
        return torch.tensor([x + [fill] * (width - len(x)) for x in seqs])

    whole = model(input_ids=padded([x for x, _ in rows], 2), labels=padded([y for _, y in rows], -100)).loss
    whole.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    split = train_tiny_tir.loss_with_prefix(model, torch.tensor(common[:n]), padded([x[n:] for x, _ in rows], 2),
                                            padded([y[n:] for _, y in rows], -100))
    split.backward()
    assert torch.allclose(whole, split, atol=1e-5)
    assert all(torch.allclose(g, p.grad, atol=1e-5) for g, p in zip(grads, model.parameters()))
