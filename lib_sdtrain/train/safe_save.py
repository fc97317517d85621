"""A finished run is never lost to its output folder. Before training: refuse an output folder that is read-only or
has no room for one save. During the run: a save that still fails (the disk filled up, the folder went read-only)
is written into a rescue folder instead, and the messages name both places.

The rescue folder is `$SDTRAIN_RESCUE_DIR/<output_name>-<start time>`, or the system's temporary folder's
`sd-train-rescue/<output_name>-<start time>` when that variable is not set: one folder per run.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError

from lib_sdtrain.errors import OutputError
from lib_sdtrain.utils.files import check_writable

RESCUE_ENV = "SDTRAIN_RESCUE_DIR"


def check_output_writable(output_dir: str | Path, output_name: str) -> None:
    """Before the model is loaded: an OutputError naming the folder unless files can be created in it."""
    check_writable(output_dir, f"{output_name}.safetensors, its states and samples are saved there")


def check_room(folder: str | Path, needed: int, what: str) -> None:
    """An OutputError naming `folder` when its file system has less than `needed` bytes free."""
    existing = Path(folder).absolute()
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise OutputError(
            f"{existing} has {format_size(free)} free, but {what} needs about {format_size(needed)}. "
            "Free some space there or choose another output_dir."
        )


def format_size(size: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def rescue_folder(output_name: str, started_at: float) -> Path:
    root = os.environ.get(RESCUE_ENV) or Path(tempfile.gettempdir()) / "sd-train-rescue"
    return Path(root) / f"{output_name}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(started_at))}"


def is_write_error(error: BaseException) -> bool:
    """Errors a full or read-only disk raises from open/write (OSError), safetensors' writer, or torch.save's
    (a RuntimeError "... failed writing file ...")."""
    if isinstance(error, OSError | SafetensorError):
        return True
    return isinstance(error, RuntimeError) and "writ" in str(error).lower()


class SaveGuard:
    """Writes the run's saves into `output_dir`, falling back to the rescue folder; remembers what went where."""

    def __init__(self, output_dir: Path, rescue_dir: Path, message: Callable[[str], None]) -> None:
        self.output_dir = output_dir
        self.rescue_dir = rescue_dir
        self.message = message
        self.problem = ""
        """Why the output folder failed the last time (empty while every save went there)."""
        self.rescued: list[Path] = []

    def write(self, name: str, write: Callable[[Path], object]) -> Path:
        """`write(path)` for `output_dir/name`; on a write error `write(rescue_dir/name)`. Returns the path used."""
        target = self.output_dir / name
        try:
            write(target)
            return target
        except Exception as e:
            if not is_write_error(e):
                raise
            self.problem = f"{self.output_dir}: {describe(e)}"
        rescued = self.rescue_dir / name
        try:
            self.rescue_dir.mkdir(parents=True, exist_ok=True)
            write(rescued)
        except Exception as e:
            if not is_write_error(e):
                raise
            raise OutputError(
                f"Could not save {name}: not in {self.problem}, nor in the rescue folder {self.rescue_dir}: "
                f"{describe(e)}. Set {RESCUE_ENV} to a folder with room."
            ) from e
        self.rescued.append(rescued)
        self.message(f"Could not save {name} in {self.problem}. Saved it as {rescued} instead.")
        return rescued

    def outcome(self) -> str:
        """The run's closing message when anything had to be rescued, else ''."""
        if not self.rescued:
            return ""
        names = ", ".join(p.name for p in self.rescued)
        return (
            f"The output folder failed ({self.problem}). Saved to the rescue folder {self.rescue_dir} instead: "
            f"{names}. Move them where you want them once the output folder has room or is writable again."
        )


def describe(error: BaseException) -> str:
    """The system's words for a write error: safetensors wraps them in Rust's debug text (`IoError(Os { ...,
    message: "No space left on device" })`)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error).strip()
    inner = re.search(r'message: "([^"]+)"', text)
    return inner.group(1) if inner else (text.splitlines()[0] if text else type(error).__name__)
