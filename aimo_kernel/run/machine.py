"""The GPUs this machine has, as ``preset="auto"`` needs them: count, name, memory.

Asks ``nvidia-smi`` first (names and memory, without touching CUDA in this process), then, if torch is
importable, ``torch.cuda.device_count()`` (a count only: reading names through torch initialises
CUDA, after which vLLM's forked workers fail). Never raises: a machine where neither answers is
"unknown" (``None``), one where they answer with nothing has no GPU (``()``). Not covered: choosing the
preset (:func:`aimo_kernel.config.presets.choose_preset`).
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess

from aimo_kernel.config.presets import Gpu

log = logging.getLogger(__name__)
_SMI_TIMEOUT_S = 20.0
_MIB_PER_GIB = 1024.0


def parse_nvidia_smi(text: str) -> tuple[Gpu, ...]:
    """``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits`` output, one GPU a line."""
    gpus = []
    for line in text.strip().splitlines():
        name, _, memory = line.rpartition(",")
        try:
            gib = float(memory.strip()) / _MIB_PER_GIB
        except ValueError:
            name, gib = line, 0.0
        if name.strip():
            gpus.append(Gpu(name=name.strip(), memory_gib=round(gib, 1)))
    return tuple(gpus)


def _from_nvidia_smi() -> tuple[Gpu, ...] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=_SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed: %s", exc)
        return None
    return parse_nvidia_smi(out.stdout) if out.returncode == 0 else ()  # a driver that finds no GPU


def _from_torch() -> tuple[Gpu, ...] | None:
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        import torch

        count = int(torch.cuda.device_count())
    except Exception as exc:  # a broken CUDA install must not stop a submission
        log.warning("torch.cuda.device_count failed: %s", exc)
        return None
    return tuple(Gpu(name="CUDA GPU", memory_gib=0.0) for _ in range(count))


def detect_gpus() -> tuple[Gpu, ...] | None:
    """The GPUs seen (``()``: none; ``None``: no way to tell)."""
    found = _from_nvidia_smi()
    return found if found is not None else _from_torch()
