"""The post API: StreamSocial's users submit posts over HTTP, the async producer sends them.
Open ``app.py`` first: :class:`PostApi` holds one app's state and its routes, and
:func:`create_app` / :func:`create_app_from_env` (uvicorn's factory,
``lab_kit.api:create_app_from_env``) build it. Behind it: ``body.py`` reads and validates a
``POST /posts`` body, ``status.py`` is the post status table and the moderation verdict
reader, ``metrics.py`` the Prometheus metrics and the timing middleware, ``errors.py`` the
:class:`ApiError` and the limits. ``server.py`` serves it: the command line
(``python -m lab_kit.api``, ``python -m lab_kit api``) and :class:`ApiServer`, the API in a
child process; ``metrics_feed.py`` is :class:`UsersPostingFeed`, the users' panel's scraper.
"""

from lab_kit.api.app import PostApi, create_app, create_app_from_env
from lab_kit.api.errors import (
    BLOCKING_TIMEOUT_S,
    MAX_BODY_BYTES,
    MAX_TRACKED,
    VARIANTS,
    ApiError,
)
from lab_kit.api.metrics import ApiMetrics
from lab_kit.api.metrics_feed import UsersPostingFeed
from lab_kit.api.server import ApiServer, add_arguments, add_parser, cli, main
from lab_kit.api.status import StatusTable, VerdictReader

__all__ = [
    "BLOCKING_TIMEOUT_S", "MAX_BODY_BYTES", "MAX_TRACKED", "VARIANTS",
    "ApiError", "ApiMetrics", "ApiServer", "PostApi", "StatusTable", "UsersPostingFeed",
    "VerdictReader", "add_arguments", "add_parser", "cli", "create_app", "create_app_from_env",
    "main",
]
