"""Load a pipeline config from YAML into the pydantic schema, with one clear line per mistake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from configs.schema import FlywheelConfig

CONFIG_DIR = Path(__file__).resolve().parent
DEMO_CONFIG = CONFIG_DIR / "demo.yaml"
INSTRUCT_CONFIG = CONFIG_DIR / "instruct.yaml"


class ConfigError(Exception):
    pass


def _expand(obj: Any, home: str) -> Any:
    """Replace `{home}` in strings, so configs can point into FLYWHEEL_HOME wherever it is."""
    if isinstance(obj, str):
        return obj.replace("{home}", home)
    if isinstance(obj, list):
        return [_expand(x, home) for x in obj]
    if isinstance(obj, dict):
        return {k: _expand(v, home) for k, v in obj.items()}
    return obj


def format_validation_error(e: ValidationError, where: str) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        lines.append(f"{where}: {loc}: {err['msg']}{got}")
    return "\n".join(lines)


def parse_config(data: dict, where: str = "config", home: str | None = None) -> FlywheelConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of config sections at the top level, got {type(data).__name__}")
    try:
        probe = FlywheelConfig.model_construct(**data)
        resolved_home = home or str(FlywheelConfig.resolve_home(probe))
        if home:
            data = {**data, "home": home}
        return FlywheelConfig.model_validate(_expand(data, resolved_home))
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, where)) from None


def load_config(path: str | Path, home: str | None = None) -> FlywheelConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p} (see configs/ for examples)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    return parse_config(data, str(p), home)


def apply_overrides(cfg: FlywheelConfig, overrides: dict[str, Any], where: str = "overrides") -> FlywheelConfig:
    """`cfg` with dotted keys set, e.g. {"generation.sampling.temperature": 0.7}, validated as a whole.

    A key that names no field fails with the fields that exist at that level, so a typo never passes as a
    silently ignored setting.

    >>> from configs import DEMO_CONFIG, load_config
    >>> apply_overrides(load_config(DEMO_CONFIG), {"generation.sampling.temperature": 0.7}).generation.sampling.temperature
    0.7
    """
    if not overrides:
        return cfg
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: expected a mapping of dotted keys to values, got {type(overrides).__name__}")
    data = cfg.model_dump(mode="json")
    for key, value in overrides.items():
        *parents, leaf = str(key).split(".")
        node: Any = data
        for depth, part in enumerate([*parents, leaf]):
            at = ".".join([*parents, leaf][:depth]) or "the top level"
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                part = int(part)
            elif not isinstance(node, dict) or part not in node:
                known = sorted(node) if isinstance(node, dict) else f"{len(node)} list items"
                raise ConfigError(f"{where}: {key!r}: {at} has no {part!r} (it has: {known})")
            if depth == len(parents):
                node[part] = value
            else:
                node = node[part]
    try:
        return FlywheelConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, where)) from None
