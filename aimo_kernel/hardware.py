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

    def tokens_per_second(self, batch: int, mean_context: float) -> float:
        """Generated tokens per second over the whole batch."""
        return max(1, min(batch, self.max_batch)) / self.step_seconds(batch, mean_context)


T4X2 = ThroughputModel(name="t4x2", weight_bytes=3.53 * GB, kv_bytes_per_token=0.246 * MB, bandwidth=320 * GB,
                       efficiency=0.75, fixed_step_s=0.003, max_batch=64)
# L4: 300 GB/s, TP=4 splits the weights four ways; H100: 3.35 TB/s, one GPU holds the whole model.
L4X4 = ThroughputModel(name="l4x4", weight_bytes=1.77 * GB, kv_bytes_per_token=0.123 * MB, bandwidth=300 * GB,
                       efficiency=0.75, fixed_step_s=0.004, max_batch=128)
H100 = ThroughputModel(name="h100", weight_bytes=7.06 * GB, kv_bytes_per_token=0.49 * MB, bandwidth=3350 * GB,
                       efficiency=0.7, fixed_step_s=0.002, max_batch=256)

MODELS = {m.name: m for m in (T4X2, L4X4, H100)}
