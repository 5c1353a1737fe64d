"""Errors raised by validation, each naming the field it is about."""

from __future__ import annotations


class FieldError(ValueError):
    """One invalid field: ``field`` is a dotted path such as ``batch[3].properties.price``."""

    def __init__(self, field: str, message: str, *, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class PayloadError(Exception):
    """The request as a whole is refused (bad JSON, too large, no valid item)."""

    def __init__(self, status: int, code: str, errors: list[FieldError]) -> None:
        super().__init__(f"{status} {code}: " + "; ".join(str(e) for e in errors))
        self.status = status
        self.code = code
        self.errors = errors


class RateLimited(Exception):
    """The workspace is over its ingestion rate; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited, retry after {retry_after:.2f}s")
        self.retry_after = retry_after
