"""``python -m lab_kit.moderation``: run the moderation service (one process or a supervisor)."""

import sys

from lab_kit.moderation.cli import main

sys.exit(main())
