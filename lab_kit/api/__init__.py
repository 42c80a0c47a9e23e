"""The post API (placeholder face)."""

from lab_kit.api.app import *  # noqa: F403
from lab_kit.api.app import create_app, create_app_from_env  # noqa: F401
