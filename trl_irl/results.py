"""The one way a job ends: its result written atomically, then reported (``finish``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .checkpoints import atomic_write_text


def finish(result: dict, path: Path, report: Callable[[dict, Path], object] | None = None, indent: int = 2) -> Path:
    """Write ``result`` to ``path`` atomically (a finished job is never half-written), then ``report(result, path)``
    (the console table and the figures beside it); returns ``path``."""
    path = atomic_write_text(path, json.dumps(result, indent=indent))  # makes the folder too
    if report is not None:
        report(result, path)
    return path
