from typing import Any


class ApplicationError(Exception):
    """The one error services raise when they refuse a request.

    `message` is meant for the caller (the API renders it in its error shape); `extra` carries
    machine-readable details, e.g. `{"field": "deadline"}`.
    """

    def __init__(self, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}
