"""Waiting for background jobs in tests."""

from __future__ import annotations

import time


def wait_for(condition, timeout: float = 120.0, what: str = "condition"):
    """The first truthy value of `condition()`, polled until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def finished(job, timeout: float = 120.0) -> dict:
    """The job's snapshot once it has stopped running."""
    wait_for(lambda: not job.running, timeout, f"{job.id} to finish")
    return job.snapshot()
