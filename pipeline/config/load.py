"""Loading: TOML (a path or a shipped config's name) + `--set` overrides -> a validated `Config`."""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from pipeline.config.sections import Config, ConfigError
from pipeline.config.validate import validate


def shipped_configs() -> dict[str, str]:
    """`{name: TOML text}` of the configs shipped in the package (jobs/configs/*.toml)."""
    from importlib.resources import files

    folder = files("jobs").joinpath("configs")
    return {Path(f.name).stem: f.read_text() for f in folder.iterdir()
            if f.name.endswith(".toml")}


def config_source(config: str | Path) -> tuple[str, str]:
    """(name, TOML text) of `config`: a TOML file's path, or a shipped config's name ("demo")."""
    p = Path(config)
    if p.is_file():
        return p.stem, p.read_text()
    shipped = shipped_configs() if p.suffix == "" and len(p.parts) == 1 else {}
    if str(config) in shipped:
        return str(config), shipped[str(config)]
    raise ConfigError(f"config file: {str(config)!r} does not exist (nor is it a shipped config: "
                      f"{', '.join(sorted(shipped_configs()))})")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read TOML (a path or a shipped config's name; None = defaults), apply `section.key=value`
    overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        _name, text = config_source(path)
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file: {str(path)!r} is not valid TOML: {exc}") from exc
    for item in overrides or []:
        _apply_override(raw, item)
    return from_dict(raw)


def from_dict(raw: dict[str, Any]) -> Config:
    """Build and validate a Config from a nested dict (e.g. parsed TOML)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a table of sections, got {type(raw).__name__}")
    sections = {f.name: f for f in dataclasses.fields(Config)}
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in sections:
            raise ConfigError(
                f"{name}: unknown section; valid sections: {', '.join(sorted(sections))}"
            )
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a table, got {value!r}")
        section_type = get_type_hints(Config)[name]
        kwargs[name] = _build_section(name, section_type, value)
    cfg = Config(**kwargs)
    validate(cfg)
    return cfg


def _build_section(section: str, cls: type, values: dict[str, Any]) -> Any:
    hints = get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(
                f"{section}.{key}: unknown key; valid keys of [{section}]: {', '.join(valid)}"
            )
        kwargs[key] = _coerce(f"{section}.{key}", hints[key], value)
    return cls(**kwargs)


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check `value` against the annotation `tp` (int -> float widening allowed)."""
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(key, arg, value)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} has the wrong type (expected {tp})")
    if origin is list:
        (item_tp,) = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", item_tp, v) for i, v in enumerate(value)]
    if origin is dict:
        _, val_tp = get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return {str(k): _coerce(f"{key}.{k}", val_tp, v) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise AssertionError(f"unsupported annotation {tp} for {key}")  # internal invariant


def _parse_scalar(text: str) -> Any:
    """Parse the right side of `--set k=v` as a TOML value; fall back to a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    dotted, text = item.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set {dotted!r}: expected section.key (e.g. train.max_steps=20)")
    section, key = parts
    target = raw.setdefault(section, {})
    if not isinstance(target, dict):
        raise ConfigError(f"{section}: expected a table, got {target!r}")
    target[key] = _parse_scalar(text.strip())
