"""Preset -> vLLM engine arguments. No vLLM needed: the T4 arguments are checked here because no T4 is."""

from __future__ import annotations

import dataclasses
import os

import pytest

from aimo_kernel.config import ConfigError, EngineConfig
from aimo_kernel.config.presets import get_preset
from aimo_kernel.engine import EngineError, engine_kinds, get_engine
from aimo_kernel.engine.vllm_backend import engine_args, engine_env, supported_args


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
    assert "attention_backend" not in args and args["distributed_executor_backend"] == "uni"


def test_engine_env():
    cpu = engine_env(get_preset("cpu").engine)
    assert cpu == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    t4 = engine_env(get_preset("aimo1-t4x2").engine)
    assert t4["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    # vllm-cpu turns "uni" into "mp" while the switch is on; a streaming engine's core is its own process anyway
    assert engine_env(get_preset("cpu").engine, streaming=True)["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    mp = dataclasses.replace(get_preset("cpu").engine, distributed_executor_backend="")
    assert engine_env(mp, streaming=True)["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    assert engine_env(get_preset("aimo3-h100").engine, streaming=True)["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"


def test_a_single_process_executor_cannot_run_tensor_parallel():
    with pytest.raises(ConfigError, match=r"distributed_executor_backend 'uni'.*tensor_parallel_size must be 1, got 2"):
        dataclasses.replace(get_preset("aimo1-t4x2").engine, distributed_executor_backend="uni")


def test_engine_env_is_set_per_engine_and_a_users_own_setting_wins(monkeypatch):
    from aimo_kernel.engine import vllm_backend

    monkeypatch.setattr(vllm_backend, "_SET_BY_US", {})
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "7")  # the user's own
    vllm_backend.apply_env(engine_env(get_preset("cpu").engine))  # offline, in process
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    mp = dataclasses.replace(get_preset("cpu").engine, distributed_executor_backend="mp")
    vllm_backend.apply_env(engine_env(mp, streaming=True))  # a later streaming engine
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "7"


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

    code = ("import sys, aimo_kernel, aimo_kernel.cli, aimo_kernel.engine, aimo_kernel.run.runner; "
            "print('vllm' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_a_registered_backend_is_accepted_by_config_and_reports_streaming():
    from aimo_kernel.engine.registry import engine_kinds, engine_spec, is_streaming, register_engine, unregister_engine

    register_engine("custom-test", "aimo_kernel.testing.fake:create_async_engine", streaming=True)
    try:
        assert EngineConfig(backend="custom-test").backend == "custom-test"
        assert is_streaming("custom-test") and "custom-test" in engine_kinds()
        assert is_streaming("vllm") and not is_streaming("vllm-offline") and not is_streaming("no-such")
    finally:
        unregister_engine("custom-test")
    assert engine_spec("custom-test") is None


@pytest.mark.parametrize(("preset", "eager"), [("cpu", True), ("aimo1-t4x2", False), ("aimo2-l4x4", False),
                                               ("aimo3-h100", False)])
def test_only_the_cpu_preset_skips_compilation_and_graphs(preset, eager):
    assert get_preset(preset).engine.enforce_eager is eager
