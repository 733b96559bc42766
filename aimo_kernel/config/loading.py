"""Loading a configuration: a preset, then a TOML file, then ``section.field=value`` overrides; and TOML output.

Sits above both the schema and the presets, so neither imports the other's loader.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from aimo_kernel.config.presets import get_preset
from aimo_kernel.config.schema import SECTION_TYPES, SECTIONS, Config, ConfigError


def _replace_section(section: object, name: str, values: Mapping[str, Any]) -> object:
    known = {f.name for f in dataclasses.fields(section)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in [{name}]; allowed: {sorted(known)}")
    cleaned = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()}
    try:
        return dataclasses.replace(section, **cleaned)  # type: ignore[type-var]
    except TypeError as exc:  # a wrong type that __post_init__ did not catch
        raise ConfigError(f"[{name}]: {exc}") from None


def merge(config: Config, values: Mapping[str, Any]) -> Config:
    """Return ``config`` with the nested mapping ``values`` (TOML layout) applied on top."""
    top: dict[str, Any] = {}
    for key, value in values.items():
        if key in SECTION_TYPES:
            if not isinstance(value, Mapping):
                raise ConfigError(f"[{key}] must be a table, got {value!r}")
            top[key] = _replace_section(getattr(config, key), key, value)
        elif key in ("preset", "competition"):
            top[key] = value
        else:
            raise ConfigError(
                f"unknown top-level key {key!r}; allowed: preset, competition, {', '.join(SECTIONS)}"
            )
    return dataclasses.replace(config, **top)


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse ``section.field=value``; the value is read as TOML (``8``, ``0.5``, ``true``, ``"x"``),
    falling back to a bare string."""
    key, sep, raw = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not name:
        raise ConfigError(f"override {text!r} must look like section.field=value")
    if section not in SECTION_TYPES:
        raise ConfigError(f"override {text!r}: unknown section {section!r}; allowed: {', '.join(SECTIONS)}")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, name, value


def apply_overrides(config: Config, overrides: Iterable[str]) -> Config:
    nested: dict[str, dict[str, Any]] = {}
    for item in overrides:
        section, name, value = parse_override(item)
        nested.setdefault(section, {})[name] = value
    return merge(config, nested)


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None


def load_config(
    preset: str | None = None,
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
) -> Config:
    """Build a config: a preset (the file's ``preset`` key, else ``preset``, else ``cpu``), then the
    TOML file's tables, then the command-line overrides."""
    values = read_toml(path) if path is not None else {}
    name = preset or values.get("preset") or "cpu"
    config = get_preset(str(name))
    values = {k: v for k, v in values.items() if k != "preset"}
    config = merge(config, values)
    return apply_overrides(config, overrides)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_toml(config: Config) -> str:
    """The config as a TOML file that :func:`load_config` reads back to an equal config.

    ``None`` values (e.g. no modulus) are written as comments, since TOML has no null.
    """
    lines = [f"preset = {_toml_value(config.preset)}", f"competition = {_toml_value(config.competition)}"]
    for name in SECTIONS:
        lines.append(f"\n[{name}]")
        for f in dataclasses.fields(getattr(config, name)):
            value = getattr(getattr(config, name), f.name)
            lines.append(f"# {f.name} = (none)" if value is None else f"{f.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
