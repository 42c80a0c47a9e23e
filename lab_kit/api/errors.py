"""The post API's error and limits: :class:`ApiError` (status, field, limit: every refusal's
``{"error", "field", "limit"}`` body, plus ``Retry-After`` on a 503) and the constants the app
and the command line share."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

VARIANTS = ("async", "blocking")
#: the Kafka client under the served API's producer (``--client``): ``AsyncPostProducer``'s
#: ``client`` (kafka-python's sender thread, or librdkafka with the lab's poll thread)
API_CLIENTS = ("kafka-python", "confluent")
DEFAULT_API_CLIENT = "kafka-python"
#: a valid post is at most ~45 kB of JSON (5,000 characters of text, 10 URLs of 2,048)
MAX_BODY_BYTES = 64 * 1024
MAX_TRACKED = 100_000
BLOCKING_TIMEOUT_S = 5.0
#: a request body must arrive whole within this (a slow client cannot hold a request open)
BODY_TIMEOUT_S = 10.0
#: uvicorn's ``limit_concurrency`` per worker: past this many connections or requests at once,
#: uvicorn itself answers 503 (the load driver keeps 256 connections open)
LIMIT_CONCURRENCY = 1024
#: ``Retry-After`` (seconds) of a 503: the in-flight bound frees up within a broker round
#: trip; a full spool, or a server shutting down, takes longer
RETRY_AFTER_BUSY_S = 1
RETRY_AFTER_FULL_S = 5
#: ``?wait=ack`` waits at most this long for Kafka's answer; then ``504`` with the post still
#: accepted (it is in the client or the spool and goes on; only the wait ends)
WAIT_ACK_TIMEOUT_S = 10.0


class ApiError(Exception):
    """A refused request: ``status``, ``field`` and ``limit`` (the JSON body's), and for a 503
    or 429 ``retry_after`` (seconds, the ``Retry-After`` header)."""

    def __init__(self, status: int, field: str, limit: Any, message: str,
                 retry_after: int | None = None):
        self.status, self.field, self.limit = status, field, limit
        self.retry_after = retry_after
        super().__init__(message)

    def body(self) -> dict:
        return {"error": str(self), "field": self.field, "limit": self.limit}

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"retry-after": str(self.retry_after)}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers())
