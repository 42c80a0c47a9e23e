"""Moderation: consume posts, moderate them, fan the verdicts out (placeholder face)."""

from lab_kit.moderation.stage import (
    ModerationService,
    RecheckWorker,
    moderation_results,
    topic_names,
)

__all__ = ["ModerationService", "RecheckWorker", "moderation_results", "topic_names"]
