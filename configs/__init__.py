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
