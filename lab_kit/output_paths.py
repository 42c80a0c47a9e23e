"""Output paths of the command lines, checked before any work starts.

A bench or drill runs for minutes; finding out at the end that ``--json`` points into a
directory that does not exist throws the whole run away. Every CLI calls
:func:`check_output_path` on each output option first, next to its other value checks::

    check_output_path(args.json_path, "--json")

It raises ``ValueError`` (the CLIs print it as one ``error: ...`` line and exit 2). Nothing is
created or written here: the check only looks.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["check_output_path"]


def check_output_path(path: str | os.PathLike[str] | None, option: str = "--json"
                      ) -> Path | None:
    """The ``path`` of output option ``option`` as a :class:`~pathlib.Path`, if a file can be
    written there; ``None`` stays ``None`` (the option was not given).

    Raises ``ValueError`` starting with ``option`` when the path is empty, is a directory,
    its directory does not exist (or is not a directory), or the file or its directory is
    not writable.

    >>> check_output_path(None) is None
    True
    >>> check_output_path("/no/such/dir/x.json")
    Traceback (most recent call last):
    ...
    ValueError: --json: cannot write /no/such/dir/x.json: directory /no/such/dir does not exist
    """
    if path is None:
        return None
    if not os.fspath(path):
        raise ValueError(f"{option}: the path is empty; give a file to write")
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{option}: {path} is a directory, not a file to write")
    parent = p.parent
    if not parent.exists():
        raise ValueError(f"{option}: cannot write {path}: directory {parent} does not exist")
    if not parent.is_dir():
        raise ValueError(f"{option}: cannot write {path}: {parent} is not a directory")
    if p.exists():
        writable = os.access(p, os.W_OK) and os.access(parent, os.X_OK)
    else:
        writable = os.access(parent, os.W_OK | os.X_OK)
    if not writable:
        raise ValueError(f"{option}: cannot write {path}: permission denied")
    return p
