"""Decode-throughput models of the competition hardware, for planning and simulation.

A decode step reads every weight once and every sequence's KV cache once, so on a memory-bound GPU
``step ≈ (weight bytes + batch × mean context × KV bytes per token) / effective bandwidth + fixed
cost``; each sequence in the batch gains one token per step. The T4×2 figures are the
NuminaMath-7B 8-bit GPTQ ones derived in the project's facts (3.53 GB read per GPU per step,
0.246 MB of KV per token per GPU at TP=2, 320 GB/s at 75%, 3 ms all-reduce). They are the default
until a calibration measured on the real hardware replaces them. Not a simulator of vLLM itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

GB = 1e9
MB = 1e6


@dataclass(frozen=True, kw_only=True)
class ThroughputModel:
    name: str
    weight_bytes: float  # read per GPU per decode step
    kv_bytes_per_token: float  # per GPU
    bandwidth: float  # bytes/s per GPU
    efficiency: float  # share of the bandwidth reached
    fixed_step_s: float  # all-reduce, launch and sampling overhead per step
    max_batch: int

    def step_seconds(self, batch: int, mean_context: float) -> float:
        batch = max(1, min(batch, self.max_batch))
        traffic = self.weight_bytes + batch * mean_context * self.kv_bytes_per_token
        return traffic / (self.bandwidth * self.efficiency) + self.fixed_step_s


T4X2 = ThroughputModel(name="t4x2", weight_bytes=3.53 * GB, kv_bytes_per_token=0.246 * MB, bandwidth=320 * GB,
                       efficiency=0.75, fixed_step_s=0.003, max_batch=64)
# L4: 300 GB/s, TP=4 splits the weights four ways; H100: 3.35 TB/s, one GPU holds the whole model.
L4X4 = ThroughputModel(name="l4x4", weight_bytes=1.77 * GB, kv_bytes_per_token=0.123 * MB, bandwidth=300 * GB,
                       efficiency=0.75, fixed_step_s=0.004, max_batch=128)
H100 = ThroughputModel(name="h100", weight_bytes=7.06 * GB, kv_bytes_per_token=0.49 * MB, bandwidth=3350 * GB,
                       efficiency=0.7, fixed_step_s=0.002, max_batch=256)

MODELS = {m.name: m for m in (T4X2, L4X4, H100)}


@dataclass(frozen=True, kw_only=True)
class FittedThroughputModel(ThroughputModel):
    """A model fitted to measured steps (``aimo-kernel calibrate``): adds a cost per sequence in the batch.

    On a CPU, or a GPU at small batch, sampling and the per-sequence work are not negligible next to the
    weight read; ``weight_bytes`` and ``kv_bytes_per_token`` are then effective bytes at ``bandwidth``.
    """

    per_sequence_s: float = 0.0

    def step_seconds(self, batch: int, mean_context: float) -> float:
        return super().step_seconds(batch, mean_context) + max(1, min(batch, self.max_batch)) * self.per_sequence_s


def load_calibration(path: str | Path) -> ThroughputModel:
    """The throughput model of a calibration file written by ``aimo-kernel calibrate`` (its ``model`` table)."""
    import json

    data = json.loads(Path(path).read_text(encoding="utf-8"))
    try:
        fields = dict(data["model"])
    except (KeyError, TypeError):
        raise ValueError(f"{path}: not a calibration file (no 'model' table)") from None
    return FittedThroughputModel(**fields)


def throughput_model(name_or_path: str) -> ThroughputModel:
    """A named model (t4x2, l4x4, h100) or the one of a calibration file."""
    if name_or_path in MODELS:
        return MODELS[name_or_path]
    if Path(name_or_path).is_file():
        return load_calibration(name_or_path)
    raise ValueError(f"unknown hardware {name_or_path!r}: use {', '.join(MODELS)} or a calibration file")
