"""Writing files so that a crash, a full disk or a cancel never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lib_sdtrain.errors import OutputError

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()+\-\[\]]{0,127}$")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename, on error it is removed.

    The temporary file lives in the same folder, so the final `os.replace` is atomic on every local file system.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_file_beside(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _new_file_beside(target: Path) -> Path:
    """An empty, new, uniquely named file in `target`'s folder with the mode a plain `open(target, "w")` gives.

    mkstemp makes files 0600 and the rename keeps that, which locks other users (a WebUI running as another user,
    a container) out of every caption, latent and LoRA. So: 0666 less the umask, or the mode `target` has now.
    """
    tmp = _create_unique(
        lambda token: target.with_name(f".{target.name}.{token}.tmp"),
        lambda path: os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)),
    )
    with contextlib.suppress(FileNotFoundError):
        os.chmod(tmp, stat.S_IMODE(target.stat().st_mode))
    return tmp


def make_folder_beside(target: Path, tag: str) -> Path:
    """A new, uniquely named hidden folder `.<name>.<tag>-<random>` beside `target`, to build in and rename into
    place; made as mkdir makes folders (0777 less the umask), where mkdtemp would make it 0700 for good."""
    return _create_unique(lambda token: target.with_name(f".{target.name}.{tag}-{token}"), os.mkdir)


def _create_unique(name: Callable[[str], Path], create: Callable[[Path], object]) -> Path:
    for _ in range(100):
        path = name(secrets.token_hex(4))
        try:
            create(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"Could not create a temporary name like {name('X')}")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def check_writable(folder: str | os.PathLike[str], why: str) -> None:
    """Raise OutputError naming `folder` unless a file can be created in it (or in the nearest existing folder
    above it, where atomic_path would create it). Stages call this before any long work, so a read-only folder
    fails in a second instead of after the model has run. `why` finishes the message: what was to be written."""
    target = Path(folder).absolute()
    while not target.exists() and target.parent != target:
        target = target.parent
    try:
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as e:
        raise OutputError(
            f"Cannot write in {target} ({e.strerror or e}): {why}. Make the folder writable or choose another one."
        ) from e


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
