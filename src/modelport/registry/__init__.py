"""The model registry: versions and aliases (SQL) over content-addressed artifacts."""

from modelport.registry.registry import Registry, parse_ref
from modelport.registry.store import AliasEvent, ModelVersion

__all__ = ["AliasEvent", "ModelVersion", "Registry", "parse_ref"]
