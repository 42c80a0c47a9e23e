"""``python -m lab_kit.api``: serve the post API on loopback."""

import sys

from lab_kit.api.server import cli

sys.exit(cli())
