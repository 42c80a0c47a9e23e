"""Benchmarks: what the lab's parts achieve, measured on a real broker and reported as JSON.

Four suites behind one command, ``python -m lab_kit bench [producer|pipeline|api|json]``:
``producers.py`` (open it first) puts the producers side by side — ``sync``, a plain
kafka-python loop, ``AsyncPostProducer``, confluent-kafka and the open loop at 10,000 posts/s;
``pipeline.py`` times the whole pipeline end to end (producer -> Kafka -> moderation service ->
results); ``api.py`` drives the post API over HTTP, healthy and with the broker killed
(``python -m lab_kit.bench.api`` runs it alone); ``json_codecs.py`` races the standard
library's ``json`` against msgspec, the data path's codec, on the lab's posts. ``cli.py`` is
the ``bench`` parser and the dispatcher (:func:`add_parser`, :func:`main`), re-exported here
for :mod:`lab_kit.cli`.
Benchmarks sit on the harness (:mod:`lab_kit.harness`); nothing in the library imports them.
"""

from lab_kit.bench.cli import add_parser, main

__all__ = ["add_parser", "main"]
