"""Service configuration: one `modelport.yaml` per service, with `${ENV}` interpolation.

Values such as `${DATABASE_URL}` or `${DATABASE_URL:-sqlite:///x.db}` are filled from
the environment mapping handed in (the entry point passes `os.environ`); this module
reads no environment itself. Errors name the file, the key and what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from modelport.dataplane import ModelConfig
from modelport.errors import ConfigError
from modelport.pipeline.pipeline import PipelineConfig

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ServiceConfig(BaseModel):
    """What one service runs."""

    name: str = "modelport"
    models: list[ModelConfig] = Field(default_factory=list)
    pipelines: list[PipelineConfig] = Field(default_factory=list)

    def model_for(self, ref: str) -> ModelConfig:
        """The served model a pipeline's `model: ref` uses; added when not listed."""
        for model in self.models:
            if model.ref == ref:
                return model
        model = ModelConfig(ref=ref)
        if any(m.served_name == model.served_name for m in self.models):
            model.name = f"{model.served_name}-{len(self.models)}"
        self.models.append(model)
        return model


def interpolate(value: Any, env: Mapping[str, str], where: str = "") -> Any:
    if isinstance(value, str):
        def fill(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{where or 'config'}: ${{{name}}} is not set in the environment")
        return _VAR.sub(fill, value)
    if isinstance(value, dict):
        return {k: interpolate(v, env, f"{where}.{k}" if where else str(k))
                for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def load_config(path: Path, env: Mapping[str, str]) -> ServiceConfig:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return ServiceConfig.model_validate(interpolate(raw, env))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: {key}: {first['msg']}") from exc
