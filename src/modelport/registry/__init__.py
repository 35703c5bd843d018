"""The model registry: versions and aliases (SQL) over content-addressed artifacts."""

from modelport.model import ModelVersion
from modelport.registry.registry import Registry, parse_ref
from modelport.registry.store import AliasEvent

__all__ = ["AliasEvent", "ModelVersion", "Registry", "parse_ref"]
