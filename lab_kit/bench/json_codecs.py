"""``python -m lab_kit bench json``: the standard library's ``json`` against msgspec on the
lab's own posts, side by side in one run.

Why it exists: :mod:`lab_kit.json_codec` chose msgspec for the whole data path and says by how
much it is faster; this suite is where that number comes from. Both codecs encode and decode
the same workload posts (a post's dict, and the moderation result the stage writes) in
interleaved rounds, so a noisy neighbour hits both alike; the report gives the median µs per
document of each and the ratios of those medians. No broker needed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab_kit import json_codec
from lab_kit.posts import Workload

__all__ = ["measure", "main"]

def _std_dumps(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def _std_loads(data: bytes) -> Any:
    return json.loads(data)


CODECS: dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any]]] = {
    "stdlib": (_std_dumps, _std_loads),
    "msgspec": (json_codec.dumps, json_codec.loads),  # what the data path calls
}


def _documents(n: int) -> list[dict[str, Any]]:
    """Half posts as the producer writes them, half results as the stage writes them."""
    docs: list[dict[str, Any]] = []
    for i, post in enumerate(Workload(seed=7).posts(n)):
        d = post.to_dict()
        if i % 2:
            d = {"post_id": d["post_id"], "user_id": d["user_id"], "decision": "approved",
                 "reasons": [], "score": 0.12, "degraded": False, "created_at": d["created_at"],
                 "moderated_at": d["created_at"] + 0.02}
        docs.append(d)
    return docs


def _time_per_doc(fn: Callable[[Any], Any], items: list[Any]) -> float:
    t0 = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - t0) / len(items) * 1e6


def measure(posts: int = 5000, rounds: int = 5) -> dict[str, Any]:
    """Median µs per document to encode and to decode, per codec, and the ratios."""
    if posts < 1 or rounds < 1:
        raise ValueError(f"posts ({posts}) and rounds ({rounds}) must be >= 1")
    docs = _documents(posts)
    encoded = [_std_dumps(d) for d in docs]
    samples: dict[str, dict[str, list[float]]] = {
        name: {"encode_us": [], "decode_us": []} for name in CODECS}
    for _ in range(rounds):
        for name, (dumps, loads) in CODECS.items():  # interleaved: both see the same noise
            samples[name]["encode_us"].append(_time_per_doc(dumps, docs))
            samples[name]["decode_us"].append(_time_per_doc(loads, encoded))
    for name, (dumps, loads) in CODECS.items():  # same answers, or the race means nothing
        if [loads(dumps(d)) for d in docs[:200]] != docs[:200]:
            raise AssertionError(f"{name} does not round-trip the workload documents")
    medians = {name: {k: round(statistics.median(v), 3) for k, v in s.items()}
               for name, s in samples.items()}
    std, fast = medians["stdlib"], medians["msgspec"]
    return {
        "suite": "json", "documents": posts, "rounds": rounds,
        "mean_bytes": round(statistics.fmean(len(e) for e in encoded), 1),
        "codecs": medians,
        "msgspec_over_stdlib": {
            "encode_speedup": round(std["encode_us"] / fast["encode_us"], 2),
            "decode_speedup": round(std["decode_us"] / fast["decode_us"], 2),
        },
    }


def main(args: argparse.Namespace) -> int:
    report = measure(rounds=args.rounds or 5)
    for name, m in report["codecs"].items():
        print(f"{name:>8}: encode {m['encode_us']:6.2f} µs/doc, decode {m['decode_us']:6.2f} "
              f"µs/doc")
    ratio = report["msgspec_over_stdlib"]
    print(f"msgspec over stdlib (medians of {report['rounds']} rounds, "
          f"{report['documents']} documents of {report['mean_bytes']:.0f} B): encode "
          f"{ratio['encode_speedup']}x, decode {ratio['decode_speedup']}x")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json_path}")
    return 0
