"""Moderation: consume posts, moderate them (backend, or local rules when it fails or the stage
is behind), fan the verdicts out, commit only past acked outputs. Open ``stage.py`` first: its
docstring is the data flow, and ``Stage`` is the loop (poll -> chunks -> backend calls ->
outputs -> commits). ``service.py`` is the :class:`ModerationService` (circuit breaker, load
shedding, its ``Backend`` calls), ``recheck.py`` the :class:`RecheckWorker` that re-moderates
degraded posts, ``results.py`` reads the results back (:func:`moderation_results`),
``profile.py`` times the loop's phases (CPU per phase, for ``bench pipeline --profile``),
``settings.py`` holds the constants, :func:`topic_names` and the checks of every setting,
``cli.py`` is ``python -m lab_kit.moderation`` (one member, or a supervisor of N member
processes). Below them: ``clients.py`` (kafka-python or confluent-kafka consumer + producer),
``offsets.py`` (chunks and the per-partition commit rule), ``rules.py`` (the local rules and
verdicts) and the ``backend/`` subpackage (the moderation backend service and its client).
"""

from lab_kit.moderation.recheck import RecheckWorker
from lab_kit.moderation.results import moderation_results
from lab_kit.moderation.service import ModerationService
from lab_kit.moderation.settings import (
    DEFAULT_TOPICS,
    HEARTBEAT_INTERVAL_MS,
    PRODUCER_DEFAULTS,
    SESSION_TIMEOUT_MS,
    TOPIC_KEYS,
    topic_names,
)

__all__ = [
    "ModerationService",
    "RecheckWorker",
    "moderation_results",
    "topic_names",
    "TOPIC_KEYS",
    "DEFAULT_TOPICS",
    "PRODUCER_DEFAULTS",
    "SESSION_TIMEOUT_MS",
    "HEARTBEAT_INTERVAL_MS",
]
