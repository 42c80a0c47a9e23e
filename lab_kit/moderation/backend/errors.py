"""The errors :class:`~lab_kit.moderation.backend.client.ModerationClient` raises.

All are :class:`ModerationBackendError`; ``retryable`` tells whether trying again later (or
falling back) makes sense. :class:`BackendBadRequest` is the only one that is not:
a 400 is a client bug. :class:`BackendOverloaded` (429, or an "overloaded" 503) is a
:class:`BackendError` that says how long to back off.
"""

from __future__ import annotations


class ModerationBackendError(Exception):
    """Base class of all client-side moderation backend errors.

    ``retryable`` tells whether trying again later (or falling back) makes sense.
    """

    retryable = True


class BackendUnavailable(ModerationBackendError):
    """Connection refused / reset / closed: the backend process is not there."""


class BackendTimeout(ModerationBackendError):
    """No answer within the client's timeout (slow or paused backend)."""


class BackendError(ModerationBackendError):
    """The backend answered an HTTP 5xx (or another unexpected non-200 status)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class BackendOverloaded(BackendError):
    """The backend refused the request because it is at capacity, before doing any work:
    HTTP 429 (more posts per second than its ``capacity_per_s``) or an "overloaded" 503
    (``max_concurrent`` requests already in progress). Shed load or retry after
    ``retry_after_s`` seconds (0.0 when the backend gave no hint). ``field`` names the limit."""

    def __init__(
        self,
        message: str,
        status: int = 429,
        retry_after_s: float = 0.0,
        field: str | None = None,
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after_s = retry_after_s
        self.field = field


class BackendGarbage(ModerationBackendError):
    """The backend answered 200 but the body is not JSON or not the expected schema."""


class BackendBadRequest(ModerationBackendError):
    """HTTP 400: the request itself is wrong (a client bug); retrying will not help."""

    retryable = False

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
