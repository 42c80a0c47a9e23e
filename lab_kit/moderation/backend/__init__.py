"""The moderation backend: a real local HTTP service that scores posts, its client and the
process manager that starts it, breaks it (kill, pause, injected faults) and finds it again.
Open ``protocol.py`` first: the routes, limits, settings (:data:`DEFAULT_SETTINGS`,
:data:`FAULT_KEYS`, :data:`SETTING_KEYS`), :class:`ModerationResult` and the state file that
both sides share; ``errors.py`` holds :class:`ModerationBackendError` and its subclasses.
Then ``client.py`` (:class:`ModerationClient`, one keep-alive connection, typed errors),
``server.py`` (the service behind ``python -m lab_kit.moderation.backend``: cost model,
capacity, faults; :func:`main`) and ``process.py`` (:class:`ModerationBackend`,
:func:`default_state_dir`).
"""

from lab_kit.moderation.backend.client import ModerationClient
from lab_kit.moderation.backend.errors import (
    BackendBadRequest,
    BackendError,
    BackendGarbage,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    ModerationBackendError,
)
from lab_kit.moderation.backend.process import ModerationBackend, default_state_dir
from lab_kit.moderation.backend.protocol import (
    DEFAULT_SETTINGS,
    FAULT_KEYS,
    MAX_BATCH_POSTS,
    SETTING_KEYS,
    ModerationResult,
)
from lab_kit.moderation.backend.server import main

__all__ = [
    "ModerationBackendError",
    "BackendUnavailable",
    "BackendTimeout",
    "BackendError",
    "BackendGarbage",
    "BackendBadRequest",
    "BackendOverloaded",
    "ModerationResult",
    "ModerationClient",
    "ModerationBackend",
    "default_state_dir",
    "FAULT_KEYS",
    "SETTING_KEYS",
    "DEFAULT_SETTINGS",
    "MAX_BATCH_POSTS",
    "main",
]
