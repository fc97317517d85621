"""The statuses of a job (jobs/runner.py) and of a training run (train/register.py), in one vocabulary.

A Status is a str: it compares equal to its value ("done" == Status.DONE), and str(), f-strings, json.dumps and the
API write the plain value, so snapshots, the API's JSON and the page's CSS classes (sdtrain-running) read the same
as with string literals."""

from __future__ import annotations

import sys
from enum import Enum

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # Python 3.10 (the WebUI's): the same behaviour, str() and format() give the value

    class StrEnum(str, Enum):
        def __str__(self) -> str:
            return str.__str__(self)

        def __format__(self, format_spec: str) -> str:
            return str.__format__(self, format_spec)


class Status(StrEnum):
    RUNNING = "running"
    """A job still at work (a training run is never summarized as running)."""
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
