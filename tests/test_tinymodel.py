"""The built-in tiny models: the random Llama made without a download, and the trained one shipped inside."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer

from aimo_kernel.models import CHAT_TEMPLATE, MARKER_TOKENS, ensure_tiny_random_llama, resolve_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return ensure_tiny_random_llama(tmp_path_factory.mktemp("m") / "tiny")


def test_files_and_architecture(model_dir):
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"} <= names
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["hidden_size"] // cfg["num_attention_heads"] == cfg["head_dim"] >= 32  # vLLM CPU attention
    tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == CHAT_TEMPLATE


def test_weights_match_the_config(model_dir):
    from safetensors.numpy import load_file

    cfg = json.loads((model_dir / "config.json").read_text())
    weights = load_file(str(model_dir / "model.safetensors"))
    assert weights["model.embed_tokens.weight"].shape == (cfg["vocab_size"], cfg["hidden_size"])
    assert weights["lm_head.weight"].shape == (cfg["vocab_size"], cfg["hidden_size"])
    assert len([k for k in weights if k.startswith("model.layers.")]) == 9 * cfg["num_hidden_layers"]


def test_tokenizer_round_trips_and_keeps_markers_whole(model_dir):
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    text = "Let $x^2=4$.\n```python\nprint(2)\n```\n```output\n2\n```\n\\boxed{2} é∑"
    enc = tok.encode(text)
    assert enc.tokens[0] == "<s>"
    assert tok.decode(enc.ids, skip_special_tokens=True) == text
    for marker in MARKER_TOKENS:
        assert len(tok.encode(marker, add_special_tokens=False).ids) == 1


def test_creation_is_idempotent(model_dir):
    stamp = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_random_llama(model_dir) == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == stamp


def test_resolve_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found or has no config.json"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="unknown built-in model"):
        resolve_model("builtin:gpt-9")


# ----- builtin:tiny-tir, the trained model shipped inside the package -----------------------------


def test_trained_model_ships_inside_the_package():
    from aimo_kernel.config.presets import get_preset
    from aimo_kernel.models import DEFAULT_MODEL

    path = resolve_model(DEFAULT_MODEL)
    assert path.parent.name == "models" and path.parent.parent.name == "aimo_kernel"
    assert get_preset("cpu").engine.model == DEFAULT_MODEL == "builtin:tiny-tir"
    weights = path / "model.safetensors"
    assert weights.stat().st_size <= 20 * 1024 * 1024
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["head_dim"] >= 32
    assert json.loads((path / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE
    training = json.loads((path / "training.json").read_text())
    assert training["total_seconds"] <= 30 * 60  # trained on this 2-core machine within 30 minutes


def test_trained_tokenizer_splits_digits_and_keeps_markers_whole():
    tok = Tokenizer.from_file(str(resolve_model("builtin:tiny-tir") / "tokenizer.json"))
    enc = tok.encode("Compute $123 \\times 45$.", add_special_tokens=False)
    assert [t for t in enc.tokens if t.strip("Ġ").isdigit()] == ["1", "2", "3", "4", "5"]
    for marker in MARKER_TOKENS:
        assert len(tok.encode(marker, add_special_tokens=False).ids) == 1
    text = "```python\nprint(7 ** 3)\n```\n```output\n343\n```\nSo $\\boxed{343}$."
    assert tok.decode(tok.encode(text).ids, skip_special_tokens=True) == text


# ----- builtin:tiny-tir-tools, the same model speaking chat-tools -------------------------------------


def test_the_chat_tools_model_ships_inside_the_package_with_a_chatml_tokenizer():
    from aimo_kernel.config.presets import get_preset
    from aimo_kernel.models import CHATML_TEMPLATE, IM_END, TOOL_MARKERS

    path = resolve_model("builtin:tiny-tir-tools")
    assert path.name == "tiny-tir-tools" and path.parent.parent.name == "aimo_kernel"
    preset = get_preset("cpu-tools")
    assert (preset.engine.model, preset.tir.dialect) == ("builtin:tiny-tir-tools", "chat-tools")
    assert (path / "model.safetensors").stat().st_size <= 20 * 1024 * 1024
    tok_cfg = json.loads((path / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == CHATML_TEMPLATE and tok_cfg["eos_token"] == IM_END
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["eos_token_id"] == tok.token_to_id(IM_END)
    for marker in TOOL_MARKERS:
        assert len(tok.encode(marker, add_special_tokens=False).ids) == 1
    training = json.loads((path / "training.json").read_text())
    assert training["dialect"] == "chat-tools" and training["seconds"] <= 30 * 60  # the training itself
