"""Configuration: validation messages, TOML loading, overrides, presets."""

from __future__ import annotations

import dataclasses

import pytest

from aimo_kernel.config import (
    BudgetConfig,
    Config,
    ConfigError,
    EngineConfig,
    SamplingConfig,
    SandboxConfig,
    TIRConfig,
    VoteConfig,
    apply_overrides,
    load_config,
    parse_override,
    to_toml,
)
from aimo_kernel.config.presets import PRESETS, get_preset


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (SamplingConfig, {"temperature": 3.5}, "SamplingConfig.temperature must be in [0, 2], got 3.5"),
        (SamplingConfig, {"top_p": 0.0}, "SamplingConfig.top_p must be in [1e-06, 1], got 0.0"),
        (SamplingConfig, {"max_new_tokens": 0}, "SamplingConfig.max_new_tokens must be in [1, 1e+06], got 0"),
        (SamplingConfig, {"max_new_tokens": 2.5}, "SamplingConfig.max_new_tokens must be an integer, got 2.5"),
        (SamplingConfig, {"temperature": float("nan")}, "SamplingConfig.temperature must be finite"),
        (TIRConfig, {"num_candidates": 0}, "TIRConfig.num_candidates must be in [1, 4096], got 0"),
        (TIRConfig, {"max_rounds": 100}, "TIRConfig.max_rounds must be in [1, 64], got 100"),
        (TIRConfig, {"no_code_policy": "retry"},
         "TIRConfig.no_code_policy must be one of ('restart', 'prune', 'keep')"),
        (SandboxConfig, {"timeout_s": 0}, "SandboxConfig.timeout_s must be in [0.1, 3600], got 0"),
        (SandboxConfig, {"workers": True}, "SandboxConfig.workers must be an integer, got True"),
        (SandboxConfig, {"refuse_patterns": ("",)}, "SandboxConfig.refuse_patterns must be non-empty strings"),
        (BudgetConfig, {"per_problem_seconds": 0.1}, "BudgetConfig.per_problem_seconds must be in [0.5, 604800]"),
        (BudgetConfig, {"total_seconds": 100.0, "safety_margin_s": 200.0},
         "BudgetConfig.safety_margin_s must be below total_seconds (100), got 200.0"),
        (VoteConfig, {"modulus": 1}, "VoteConfig.modulus must be 0 (none) or in [2, 1e+18], got 1"),
        (VoteConfig, {"fallback_answer": 1000}, "VoteConfig.fallback_answer must be in [0, 999], got 1000"),
        (VoteConfig, {"tolerance": 0.2}, "VoteConfig.tolerance must be in [0, 0.001], got 0.2"),
        (VoteConfig, {"tie_break": "random"}, "VoteConfig.tie_break must be one of"),
        (EngineConfig, {"backend": "tgi"},
         "EngineConfig.backend must be one of ('vllm', 'vllm-offline', 'fake', 'fake-async', 'transformers', "
         "'openai'), got 'tgi'"),
        (EngineConfig, {"dtype": "int4"}, "EngineConfig.dtype must be one of"),
        (EngineConfig, {"gpu_memory_utilization": 1.5}, "EngineConfig.gpu_memory_utilization must be in [0.05, 0.99]"),
        (EngineConfig, {"model": ""}, "EngineConfig.model must be a non-empty path"),
        (EngineConfig, {"enforce_eager": "yes"}, "EngineConfig.enforce_eager must be true or false, got 'yes'"),
        (Config, {"competition": "aimo4"}, "Config.competition must be one of ('aimo1', 'aimo2', 'aimo3')"),
    ],
)
def test_validation_names_field_range_and_value(cls, kwargs, message):
    with pytest.raises(ConfigError) as err:
        cls(**kwargs)
    assert message in str(err.value)


def test_sections_are_frozen_and_keyword_only():
    cfg = SamplingConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.temperature = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        SamplingConfig(0.5)  # type: ignore[misc]


def test_toml_file_then_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('preset = "aimo1-t4x2"\n[tir]\nnum_candidates = 16\n[sampling]\ntemperature = 0.6\n')
    cfg = load_config(path=path, overrides=["tir.num_candidates=8", "vote.tie_break=smallest"])
    assert cfg.preset == "aimo1-t4x2"
    assert cfg.tir.num_candidates == 8  # the command line wins over the file
    assert cfg.sampling.temperature == 0.6
    assert cfg.vote.tie_break == "smallest"
    assert cfg.engine.tensor_parallel_size == 2  # untouched preset values stay


def test_preset_argument_is_the_default_when_file_names_none(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[tir]\nmax_rounds = 3\n")
    cfg = load_config(preset="aimo3-h100", path=path)
    assert (cfg.preset, cfg.tir.max_rounds, cfg.vote.max_answer) == ("aimo3-h100", 3, 99_999)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[tir]\nnum_candidate = 3\n", "unknown key(s) ['num_candidate'] in [tir]"),
        ("[tri]\nx = 1\n", "unknown top-level key 'tri'"),
        ("tir = 3\n", "[tir] must be a table"),
        ("[tir\n", "is not valid TOML"),
        ("[sampling]\ntemperature = 9\n", "SamplingConfig.temperature must be in [0, 2], got 9"),
    ],
)
def test_bad_toml_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path=path)
    assert message in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(path=tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tir.num_candidates=8", ("tir", "num_candidates", 8)),
        ("sampling.temperature = 0.5", ("sampling", "temperature", 0.5)),
        ("engine.enforce_eager=true", ("engine", "enforce_eager", True)),
        ("engine.model=/models/x", ("engine", "model", "/models/x")),
        ('engine.model="a b"', ("engine", "model", "a b")),
        ('sandbox.refuse_patterns=["os.system"]', ("sandbox", "refuse_patterns", ["os.system"])),
    ],
)
def test_parse_override(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["tir", "tir=3", "nope.x=1", "tir.=3"])
def test_bad_override(text):
    with pytest.raises(ConfigError):
        apply_overrides(get_preset("cpu"), [text])


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'aimo9'; choose one of aimo1-t4x2"):
        get_preset("aimo9")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_to_toml_round_trips(tmp_path, name):
    cfg = get_preset(name)
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path=path) == cfg


@pytest.mark.parametrize(
    ("name", "competition", "hours", "modulus", "max_answer"),
    [
        ("aimo1-t4x2", "aimo1", 9, 1000, 999),
        ("aimo2-l4x4", "aimo2", 5, 1000, 999),
        ("aimo3-h100", "aimo3", 5, 0, 99_999),
        ("aimo3-gptoss20b", "aimo3", 5, 0, 99_999),
    ],
)
def test_competition_presets(name, competition, hours, modulus, max_answer):
    cfg = get_preset(name)
    assert cfg.competition == competition
    assert cfg.budget.total_seconds == hours * 3600
    assert cfg.budget.num_problems == 50
    assert (cfg.vote.modulus, cfg.vote.max_answer) == (modulus, max_answer)


@pytest.mark.parametrize(("name", "model", "context"), [("aimo3-h100", "gpt-oss-120b", 65_536),
                                                        ("aimo3-gptoss20b", "gpt-oss-20b", 32_768)])
def test_aimo3_presets_are_the_gpt_oss_recipe(name, model, context):
    cfg = get_preset(name)
    assert cfg.engine.model.endswith(model) and "numina" not in cfg.engine.model.lower()
    # MXFP4 comes from the checkpoint: no GPTQ flag, no dtype forced onto a quantized model
    assert (cfg.engine.quantization, cfg.engine.dtype, cfg.engine.tensor_parallel_size) == ("none", "auto", 1)
    assert cfg.engine.max_model_len == context and cfg.engine.enable_prefix_caching
    assert (cfg.engine.backend, cfg.engine.server) == ("openai", ("spawn",))
    assert (cfg.tir.dialect, cfg.tir.num_candidates, cfg.tir.candidates_in_all) == ("harmony", 8, 8)
    assert cfg.sandbox.session == "persistent" and cfg.vote.agreement_rules == ("4/8",)
    assert (cfg.vote.mode, cfg.vote.confidence, cfg.vote.confidence_top_k) == ("weighted", "tail_entropy", 5)
    assert cfg.budget.min_problem_seconds < cfg.budget.total_seconds / cfg.budget.num_problems \
        < cfg.budget.per_problem_seconds  # room to bank time and spend it on hard problems


def test_aimo1_preset_is_the_winning_recipe():
    cfg = get_preset("aimo1-t4x2")
    assert (cfg.tir.num_candidates, cfg.tir.max_rounds, cfg.sampling.temperature) == (48, 4, 0.8)
    assert cfg.sampling.max_new_tokens == 2048
    assert cfg.sandbox.timeout_s == 5.0
