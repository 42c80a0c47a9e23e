"""The errors ``AsyncPostProducer`` raises. A raised post was never accepted (except
:class:`DeliveryFailed`, which a future carries for a post that was accepted and then failed)."""

from __future__ import annotations


class BackpressureError(RuntimeError):
    """Too many posts in flight (``field="max_in_flight"``), or, without a spool, a refused
    batch's posts still being re-sent one by one (``field="resend_alone"``: a newer post would
    overtake them): the post was NOT accepted (the caller may retry later)."""

    def __init__(self, limit: int, waited_s: float, resending: int = 0):
        self.field = "resend_alone" if resending else "max_in_flight"
        self.limit = limit
        why = (f"resend_alone: {resending} posts of a refused batch are being re-sent one by "
               f"one, and without a spool a newer post cannot queue behind them"
               if resending else f"max_in_flight: {limit} posts already in flight")
        super().__init__(f"{why} (waited {waited_s * 1000:.0f} ms); the post was not accepted")


class ProducerClosedError(RuntimeError):
    """submit() after close()."""


class BrokerUnavailableError(RuntimeError):
    """No broker answered and there is no spool to fall back on."""


class DeliveryFailed(Exception):
    """The post was not written to its topic. ``dead_lettered`` says if it reached the DLQ."""

    def __init__(self, post_id: str, error: BaseException, dead_lettered: bool = False):
        self.post_id = post_id
        self.error = error
        self.dead_lettered = dead_lettered
        where = " (sent to the dead-letter topic)" if dead_lettered else ""
        super().__init__(f"post {post_id}: {type(error).__name__}: {error}{where}")
