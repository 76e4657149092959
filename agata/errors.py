"""The one error type of AGATA.

Every layer raises :class:`AgataError` with an :class:`ErrorCode`. The code is an
HTTP-like status so it can be carried unchanged in the RPC reply envelope
(``status_code``) and as the HTTP status at the gateway; it is translated only at
those edges.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """Error codes; the value is the HTTP-like status used on every transport."""

    INVALID_ARGUMENT = 400
    UNAUTHENTICATED = 401
    FORBIDDEN = 403
    NOT_FOUND = 404
    CONFLICT = 409
    TOO_LARGE = 413
    RATE_LIMITED = 429
    INTERNAL = 500
    UNAVAILABLE = 503
    TIMEOUT = 504

    @classmethod
    def from_status(cls, status: int) -> ErrorCode:
        try:
            return cls(status)
        except ValueError:
            return cls.INTERNAL if status >= 500 else cls.INVALID_ARGUMENT


class AgataError(Exception):
    """An error with a code and a message meant for the caller."""

    def __init__(
        self, code: ErrorCode | int, message: str, *, retry_after: float | None = None
    ) -> None:
        self.code = code if isinstance(code, ErrorCode) else ErrorCode.from_status(code)
        self.status_code = int(code)
        self.message = message
        self.retry_after = retry_after
        """Seconds the refusing side asked the caller to wait (HTTP ``Retry-After`` of a
        503 or 429), when it said."""
        super().__init__(message)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"AgataError({self.code.name}, {self.message!r})"


def invalid(message: str) -> AgataError:
    return AgataError(ErrorCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> AgataError:
    return AgataError(ErrorCode.NOT_FOUND, message)


def conflict(message: str) -> AgataError:
    return AgataError(ErrorCode.CONFLICT, message)
