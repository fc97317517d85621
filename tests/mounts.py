"""Real small file systems for fault tests: a tmpfs mount, remounted read-only where a test needs it. Tests run as
root in CI, where chmod does not stop writes, so only a read-only mount shows what a user meets."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)


@contextlib.contextmanager
def tmpfs_mount(folder: Path, size: str = "1m") -> Iterator[Path]:
    """`folder` as a fresh tmpfs of `size`; the test is skipped (with the reason) where mounting is impossible."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        done = _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        _run("umount", str(folder))


def remount_read_only(folder: Path) -> None:
    done = _run("mount", "-o", "remount,ro", str(folder))
    assert done.returncode == 0, done.stderr
