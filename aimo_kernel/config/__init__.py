"""Configuration: the schema (frozen sections), the named presets, and loading them from TOML and overrides."""

from aimo_kernel.config.loading import apply_overrides, load_config, merge, parse_override, read_toml, to_toml
from aimo_kernel.config.schema import (
    COMPETITIONS,
    DTYPES,
    GPTQ_KERNELS,
    NO_CODE_POLICIES,
    QUANTIZATIONS,
    SECTIONS,
    TIE_BREAKS,
    BudgetConfig,
    Config,
    ConfigError,
    EngineConfig,
    SamplingConfig,
    SandboxConfig,
    TIRConfig,
    VoteConfig,
    parse_agreement_rule,
    parse_give_up_rule,
)

__all__ = [
    "COMPETITIONS", "DTYPES", "GPTQ_KERNELS", "NO_CODE_POLICIES", "QUANTIZATIONS", "SECTIONS",
    "TIE_BREAKS", "BudgetConfig", "Config", "ConfigError", "EngineConfig", "SamplingConfig", "SandboxConfig",
    "TIRConfig", "VoteConfig", "apply_overrides", "load_config", "merge", "parse_override", "parse_agreement_rule",
    "parse_give_up_rule", "read_toml", "to_toml",
]
