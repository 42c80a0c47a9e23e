"""``python -m lab_kit.moderation.backend``: serve the moderation backend on loopback."""

from lab_kit.moderation.backend.server import main

main()
