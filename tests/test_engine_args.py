"""Preset -> vLLM engine arguments. No vLLM needed: the T4 arguments are checked here because no T4 is."""

from __future__ import annotations

import dataclasses

import pytest

from aimo_kernel.config import EngineConfig
from aimo_kernel.engine import EngineError, engine_kinds, get_engine
from aimo_kernel.engine.vllm_backend import engine_args, engine_env, supported_args
from aimo_kernel.presets import get_preset


def t4_args() -> dict:
    cfg = get_preset("aimo1-t4x2")
    return engine_args(cfg.engine, "/kaggle/input/model", seed=cfg.sampling.seed)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("dtype", "half"),
        ("tensor_parallel_size", 2),
        ("disable_custom_all_reduce", True),
        ("distributed_executor_backend", "mp"),
        ("gpu_memory_utilization", 0.92),
        ("max_model_len", 4096),
        ("max_num_seqs", 64),
        ("enable_prefix_caching", True),
        ("swap_space", 0.0),
        ("enforce_eager", False),
        ("attention_backend", "TRITON_ATTN"),
        ("model", "/kaggle/input/model"),
        ("trust_remote_code", False),
    ],
)
def test_t4_preset_engine_arguments(key, value):
    assert t4_args()[key] == value


def test_t4_gptq_is_left_to_autodetection():
    # Naming "gptq" would force the slow legacy kernel; unset lets vLLM pick Marlin on sm75.
    assert get_preset("aimo1-t4x2").engine.quantization == "gptq"
    assert "quantization" not in t4_args()


@pytest.mark.parametrize(("kernel", "expected"), [("marlin", "gptq_marlin"), ("legacy", "gptq")])
def test_gptq_kernel_choice(kernel, expected):
    cfg = EngineConfig(quantization="gptq", gptq_kernel=kernel)
    assert engine_args(cfg, "/m")["quantization"] == expected


def test_unquantized_model_has_no_quantization_argument():
    assert "quantization" not in engine_args(EngineConfig(), "/m")


def test_cpu_preset_avoids_the_seed_plus_chunked_prefill_crash():
    args = engine_args(get_preset("cpu").engine, "/m")
    assert args["enable_chunked_prefill"] is False
    assert args["max_num_batched_tokens"] >= 16384
    assert args["dtype"] == "float32"
    assert "attention_backend" not in args and "distributed_executor_backend" not in args


def test_engine_env():
    cpu = engine_env(get_preset("cpu").engine)
    assert cpu == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    t4 = engine_env(get_preset("aimo1-t4x2").engine)
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in t4


def test_arguments_unknown_to_the_installed_vllm_are_dropped():
    kept, dropped = supported_args({"model": "m", "swap_space": 0, "attention_backend": "X"}, {"model", "seed"})
    assert kept == {"model": "m"}
    assert dropped == {"swap_space": 0, "attention_backend": "X"}


@pytest.mark.parametrize("name", ["aimo2-l4x4", "aimo3-h100"])
def test_other_gpu_presets(name):
    cfg = get_preset(name)
    args = engine_args(cfg.engine, "/m")
    assert args["tensor_parallel_size"] == {"aimo2-l4x4": 4, "aimo3-h100": 1}[name]
    assert args["enable_prefix_caching"] is True


def test_registry():
    assert set(engine_kinds()) >= {"vllm", "fake"}
    with pytest.raises(EngineError, match="unknown engine 'tgi'"):
        get_engine("tgi", get_preset("cpu"))
    fake = get_engine("fake", dataclasses.replace(get_preset("cpu")))
    assert fake.name == "fake"


def test_import_is_light():
    import subprocess
    import sys

    code = ("import sys, aimo_kernel, aimo_kernel.cli, aimo_kernel.engine, aimo_kernel.runner; "
            "print('vllm' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
