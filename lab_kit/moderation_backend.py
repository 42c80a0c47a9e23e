"""Kept so ``python -m lab_kit.moderation_backend`` (the module's name before the package
layout, still in older scripts and notes) starts the same service. The code lives in
:mod:`lab_kit.moderation.backend` (the service itself in its ``server.py``); import from there."""

if __name__ == "__main__":
    from lab_kit.moderation.backend import main  # only when run: importing this does nothing

    main()
