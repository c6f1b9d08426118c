"""APIError: an error answered to the client, in OpenAI's shape, with its HTTP status."""
from __future__ import annotations

from typing import Any

from jaxserve.server import protocol as p

# An error message is at most this long: no error echoes a whole (maybe megabytes long) input.
MAX_ERROR_MESSAGE_CHARS = 1000


class APIError(Exception):
    """An error answered to the client: HTTP status plus OpenAI's error fields."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict[str, Any]:
        message = self.message
        if len(message) > MAX_ERROR_MESSAGE_CHARS:
            message = f"{message[:MAX_ERROR_MESSAGE_CHARS]}... (message cut at {MAX_ERROR_MESSAGE_CHARS} characters)"
        info = p.ErrorInfo(message=message, type=self.type, param=self.param, code=self.code)
        return p.ErrorResponse(error=info).model_dump()


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)
