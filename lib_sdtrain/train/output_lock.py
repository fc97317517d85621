"""One run per output: a lock file beside the outputs, so two runs naming the same output_name in the same folder
never overwrite each other's LoRA, states and step saves.

The lock is `<output_dir>/<output_name>.sdtrain.lock`, created with O_EXCL and holding who made it (pid, host,
process start time, what the run is). It is removed when the run ends; a lock whose process is gone (a crash,
kill -9) is stale and taken over. A job claims its output when it is queued and the run reuses that claim."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lib_sdtrain.errors import OutputError
from lib_sdtrain.train.safe_save import check_output_writable
from lib_sdtrain.utils.files import check_safe_name

logger = logging.getLogger("sdtrain")

LOCK_SUFFIX = ".sdtrain.lock"


class OutputBusyError(OutputError):
    """Another run is writing the same output."""


@dataclass
class OutputClaim:
    path: Path
    description: str
    made: list[Path] = field(default_factory=list)
    """The folders the claim created, deepest first: removed again if the run leaves them empty (a refused run)."""

    def release(self) -> None:
        """Remove the lock (once; a claim released twice, or never made by this process, is left alone)."""
        with _guard:
            if _held.get(self.path) is not self:
                return
            del _held[self.path]
        with contextlib.suppress(FileNotFoundError):
            if _read(self.path).get("token") == _token(self):
                self.path.unlink()
        for folder in self.made:
            try:
                folder.rmdir()
            except OSError:  # not empty: the run wrote there
                break


_held: dict[Path, OutputClaim] = {}  # the claims this process holds, by lock path
_guard = threading.Lock()


def lock_path(output_dir: str | Path, output_name: str) -> Path:
    return Path(output_dir).absolute() / f"{output_name}{LOCK_SUFFIX}"


def claim_output(output_dir: str | Path, output_name: str, description: str) -> OutputClaim:
    """Claim the output for one run, or raise OutputBusyError naming the run that holds it."""
    check_safe_name(output_name, "output_name")
    check_output_writable(output_dir, output_name)
    path = lock_path(output_dir, output_name)
    made = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    with _guard:
        if path in _held:
            raise OutputBusyError(_busy_message(output_name, path, _record(_held[path])))
        claim = OutputClaim(path, description, made)
        for _ in range(3):  # a stale lock removed by another claimant in between: try again
            try:
                _create(path, _record(claim))
                _held[path] = claim
                return claim
            except FileExistsError:
                holder = _read(path)
                if holder and _alive(holder):
                    raise OutputBusyError(_busy_message(output_name, path, holder)) from None
                logger.warning("SD-Train: removing the stale lock %s (%s)", path, _who(holder) or "unreadable")
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        raise OutputBusyError(f"Could not claim {path}: other runs keep creating it.")


def check_output_free(output_dir: str | Path, output_name: str) -> None:
    """OutputBusyError when a live run holds the output; claims nothing (for a check before a start)."""
    path = lock_path(output_dir, output_name)
    with _guard:
        held = _held.get(path)
    holder = _record(held) if held else _read_if_there(path)
    if holder and (held or _alive(holder)):
        raise OutputBusyError(_busy_message(output_name, path, holder))


@contextlib.contextmanager
def hold_output(output_dir: str | Path, output_name: str, description: str) -> Iterator[OutputClaim | None]:
    """Hold the output for the with block: a claim this process already holds (a job claims its output when it is
    queued) is used as is; else the output is claimed now and released at the end. In a multi-process run only the
    main process claims: the others write nothing."""
    path = lock_path(output_dir, output_name)
    with _guard:
        existing = _held.get(path)
    if existing is not None or int(os.environ.get("RANK", "0")) != 0:
        yield existing
        return
    claim = claim_output(output_dir, output_name, description)
    try:
        yield claim
    finally:
        claim.release()


def _create(path: Path, record: dict) -> None:
    mode = 0o666  # the umask decides, as for every file SD-Train writes
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(record, f)


def _record(claim: OutputClaim) -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "process_start": _process_start(os.getpid()),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "run": claim.description,
        "token": _token(claim),
    }


def _token(claim: OutputClaim) -> str:
    return f"{os.getpid()}-{id(claim)}"


def _read(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError):  # half-written by a process killed while creating it: stale
        return {}
    return record if isinstance(record, dict) else {}


def _read_if_there(path: Path) -> dict:
    try:
        return _read(path)
    except FileNotFoundError:
        return {}


def _alive(holder: dict) -> bool:
    """Whether the process that wrote the lock still runs. One on another host cannot be checked: held."""
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    if holder.get("host") != socket.gethostname():
        return True
    if pid == os.getpid():  # not among this process's claims (checked before): left by an earlier process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        pass
    started = holder.get("process_start")
    return started is None or _process_start(pid) in (None, started)  # a reused pid is another process


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), which tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _who(holder: dict) -> str:
    if not holder:
        return ""
    run, pid, host, since = (holder.get(key) for key in ("run", "pid", "host", "since"))
    return f"{run or 'a run'} (pid {pid} on {host}, since {since})"


def _busy_message(output_name: str, path: Path, holder: dict) -> str:
    return (
        f"{output_name} in {path.parent} is being written by {_who(holder)}. Wait for it to finish, cancel it, or "
        f"choose another output_name. If that run is gone, delete {path.name}."
    )
