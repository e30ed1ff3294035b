"""The error every request handler raises to answer with an AWS JSON 1.1 error body."""

from __future__ import annotations


class ApiError(Exception):
    """An AWS service error: `code` becomes `__type`, `message` becomes `Message`, always HTTP 400."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
