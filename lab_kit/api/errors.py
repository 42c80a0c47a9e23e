"""The post API's error and limits: :class:`ApiError` (status, field, limit: every refusal's
``{"error", "field", "limit"}`` body) and the constants the app and the command line share."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

VARIANTS = ("async", "blocking")
#: a valid post is at most ~45 kB of JSON (5,000 characters of text, 10 URLs of 2,048)
MAX_BODY_BYTES = 64 * 1024
MAX_TRACKED = 100_000
BLOCKING_TIMEOUT_S = 5.0


class ApiError(Exception):
    def __init__(self, status: int, field: str, limit: Any, message: str):
        self.status, self.field, self.limit = status, field, limit
        super().__init__(message)

    def response(self) -> JSONResponse:
        return JSONResponse({"error": str(self), "field": self.field, "limit": self.limit},
                            status_code=self.status)
