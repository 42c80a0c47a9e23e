"""The moderation backend (placeholder face)."""

from lab_kit.moderation.backend.server import *  # noqa: F403
