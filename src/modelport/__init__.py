"""modelport: put trained machine-learning models into production as microservices."""

from modelport.errors import ModelportError
from modelport.model import Model
from modelport.registry import ModelVersion, Registry
from modelport.settings import Settings
from modelport.signature import Signature

__version__ = "0.1.0"

__all__ = ["Model", "ModelVersion", "ModelportError", "Registry", "Settings", "Signature"]
