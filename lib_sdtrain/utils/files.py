"""Writing files so that a crash, a full disk or a cancel never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()+\-\[\]]{0,127}$")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename, on error it is removed.

    The temporary file lives in the same folder, so the final `os.replace` is atomic on every local file system.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def check_safe_name(name: str, what: str = "name") -> str:
    """Return `name` if it can be used as a file name inside a folder of ours; raise ValueError otherwise.

    Refuses path separators, `..`, leading dots and control characters, so that a user-supplied
    output name can never point outside the folder it is joined to.
    """
    if not _SAFE_NAME.match(name) or ".." in name:
        raise ValueError(
            f"Invalid {what} {name!r}: use letters, digits, spaces and . _ - ( ) [ ] +, "
            "starting with a letter or digit, at most 128 characters, no path separators."
        )
    return name


def resolve_allowed(path: str | os.PathLike[str], roots: list[Path], any_path: bool) -> Path | None:
    """`path` resolved if `any_path` or if it lies inside one of `roots`; None when it is outside them all."""
    resolved = Path(path).expanduser().resolve()
    if any_path:
        return resolved
    for root in roots:
        with contextlib.suppress(ValueError):
            return resolve_inside(root, str(resolved))
    return None


def resolve_inside(root: str | os.PathLike[str], relative: str) -> Path:
    """Join `relative` to `root` and make sure the result stays inside `root` (no traversal through .. or links)."""
    base = Path(root).resolve()
    candidate = (base / relative).resolve()
    if candidate != base and base not in candidate.parents:
        raise ValueError(f"{relative!r} points outside {base}")
    return candidate
