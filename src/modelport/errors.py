"""Every error modelport raises on purpose, under one base that carries its HTTP status.

The hierarchy::

    ModelportError                 500  base; `status_code` and a one-line message
    ├── ConfigError                500  bad settings or service configuration
    ├── InvalidInput               400  input that does not match a model's signature
    ├── InvalidName                400  a name, alias or reference that is not allowed
    ├── NotFound                   404
    │   ├── ModelNotFound
    │   ├── VersionNotFound
    │   └── AliasNotFound
    ├── Conflict                   409  e.g. deleting a version an alias points at
    ├── ArtifactError              500  an artifact cannot be stored or read
    │   ├── IntegrityError         500  the artifact's sha256 does not match the registry
    │   └── UnsafeArtifact         400  path traversal, absolute paths, links in an archive
    ├── FlavorError                400  no flavor fits an object, or a flavor cannot load
    ├── ModelOutputError           500  a model answered a batch with the wrong number of rows
    ├── Unauthorized               401
    ├── Forbidden                  403
    ├── PayloadTooLarge            413
    ├── UnsupportedMediaType       415  e.g. a Content-Encoding the server does not decode
    ├── Overloaded                 503  a full queue; carries `retry_after` seconds
    ├── NotReady                   503  the model or a backing service is not ready
    ├── BadGateway                 502  a service modelport called answered outside its contract
    │   └── WebhookError           502  a webhook refused a summary, or could not be reached
    └── DeadlineExceeded           504

Third-party errors (SQLAlchemy, boto, brokers) are translated where they are caught,
so callers only ever handle these.
"""

from __future__ import annotations


class ModelportError(Exception):
    """Base of every modelport error; `status_code` is what HTTP adapters answer."""

    status_code: int = 500

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code

    def __str__(self) -> str:
        return self.message


class ConfigError(ModelportError):
    status_code = 500


class InvalidInput(ModelportError):
    status_code = 400


class InvalidName(ModelportError):
    status_code = 400


class NotFound(ModelportError):
    status_code = 404


class ModelNotFound(NotFound):
    pass


class VersionNotFound(NotFound):
    pass


class AliasNotFound(NotFound):
    pass


class Conflict(ModelportError):
    status_code = 409


class ArtifactError(ModelportError):
    status_code = 500


class IntegrityError(ArtifactError):
    status_code = 500


class UnsafeArtifact(ArtifactError):
    status_code = 400


class FlavorError(ModelportError):
    status_code = 400


class ModelOutputError(ModelportError):
    """A model answered a batch of N rows with another number of rows: nothing of that
    answer can be matched to a caller, so no caller gets any of it."""

    status_code = 500


class Unauthorized(ModelportError):
    status_code = 401


class Forbidden(ModelportError):
    status_code = 403


class PayloadTooLarge(ModelportError):
    status_code = 413


class UnsupportedMediaType(ModelportError):
    status_code = 415


class Overloaded(ModelportError):
    status_code = 503

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotReady(ModelportError):
    status_code = 503


class BadGateway(ModelportError):
    """A service modelport called refused the call or answered outside its contract."""

    status_code = 502


class WebhookError(BadGateway):
    """A webhook refused what was posted to it, or could not be reached."""


class DeadlineExceeded(ModelportError):
    status_code = 504
