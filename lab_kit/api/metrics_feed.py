"""The instructor demo's "users posting" panel reads a served API through this:
:class:`UsersPostingFeed` scrapes ``/metrics`` and turns counters into rates."""

from __future__ import annotations

import time


class UsersPostingFeed:
    """Polls an API's ``/metrics`` and turns counters into what a dashboard panel shows:
    requests/s, accepted/s, spooled/s, rejected/s, the share of requests answered within
    100 ms since the last poll (from the latency histogram), broker health, spool depth.

    ``feed = UsersPostingFeed(api.url); row = feed.poll()`` once a second.
    """

    def __init__(self, url: str):
        self.url = url
        self._last: tuple[float, dict[str, float]] | None = None

    def _scrape(self) -> dict[str, float]:
        # why here: the served worker imports lab_kit.api and never needs the HTTP client
        import httpx

        out: dict[str, float] = {}
        for line in httpx.get(self.url + "/metrics", timeout=2).text.splitlines():
            if not line.startswith("lab_api_"):
                continue
            name, _, value = line.rpartition(" ")
            if name.startswith("lab_api_requests_total"):
                key = "requests"
            elif name.startswith("lab_api_posts_rejected_total"):
                key = "rejected"
            elif name == 'lab_api_request_duration_seconds_bucket{le="0.1",route="/posts"}':
                key = "posts_within_100ms"
            elif name == 'lab_api_request_duration_seconds_count{route="/posts"}':
                key = "posts_requests"
            elif "{" in name:
                continue
            else:
                key = name.removeprefix("lab_api_")
            out[key] = out.get(key, 0.0) + float(value)
        return out

    def poll(self) -> dict[str, float | None]:
        now, cur = time.monotonic(), self._scrape()
        prev_t, prev = self._last or (now, cur)
        self._last = (now, cur)
        dt = max(now - prev_t, 1e-9)

        def rate(k: str) -> float:
            return round((cur.get(k, 0.0) - prev.get(k, 0.0)) / dt, 1) if now > prev_t else 0.0

        n = cur.get("posts_requests", 0.0) - prev.get("posts_requests", 0.0)
        fast = cur.get("posts_within_100ms", 0.0) - prev.get("posts_within_100ms", 0.0)
        return {"requests_per_s": rate("requests"),
                "accepted_per_s": rate("posts_submitted_total"),
                "spooled_per_s": rate("posts_spooled_total"),
                "rejected_per_s": rate("rejected"),
                "within_100ms": round(fast / n, 4) if n else None,
                "broker_healthy": cur.get("broker_healthy"),
                "spool_depth": cur.get("spool_depth"),
                "in_flight": cur.get("posts_in_flight")}
