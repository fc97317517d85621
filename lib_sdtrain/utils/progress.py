"""One progress interface for every long job: tqdm on the CLI, callbacks in the UI, and a cancel flag for both.

A job calls `progress.start(total, desc)`, then `progress.advance(n, **info)` as it goes, and
`progress.check_cancelled()` at safe points. `info` carries what the UI shows (loss, lr, epoch, ...);
`progress.image(img)` hands over previews.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lib_sdtrain.errors import Cancelled


@dataclass
class ProgressState:
    desc: str = ""
    total: int = 0
    done: int = 0
    started_at: float = field(default_factory=time.monotonic)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def eta_seconds(self) -> float | None:
        if self.done <= 0 or self.total <= 0:
            return None
        elapsed = time.monotonic() - self.started_at
        return elapsed / self.done * max(self.total - self.done, 0)


class Progress:
    """Base progress reporter: keeps state and the cancel flag; subclasses decide how to show it."""

    def __init__(self) -> None:
        self.state = ProgressState()
        self._cancel = threading.Event()

    # --- job side -------------------------------------------------------------------------------------------
    def start(self, total: int, desc: str = "") -> None:
        self.state = ProgressState(desc=desc, total=total)
        self.on_start()

    def advance(self, n: int = 1, **info: Any) -> None:
        self.state.done += n
        self.state.info.update(info)
        self.on_advance(n, info)

    def message(self, text: str) -> None:
        """A line for the user (a warning, a skipped file, a saved file)."""
        self.on_message(text)

    def image(self, image: Any, caption: str = "", path: Any = None) -> None:
        """A picture worth showing (a training sample, a histogram); `path` is where it was saved, if it was."""
        self.on_image(image, caption, path)

    def finish(self) -> None:
        self.on_finish()

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise Cancelled("Cancelled by the user.")

    # --- controller side ------------------------------------------------------------------------------------
    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    # --- hooks ----------------------------------------------------------------------------------------------
    def on_start(self) -> None: ...
    def on_advance(self, n: int, info: dict[str, Any]) -> None: ...
    def on_message(self, text: str) -> None: ...
    def on_image(self, image: Any, caption: str, path: Any = None) -> None: ...
    def on_finish(self) -> None: ...


class TqdmProgress(Progress):
    """Progress on the terminal: a tqdm bar, messages printed above it."""

    def __init__(self, disable: bool = False) -> None:
        super().__init__()
        self._bar: Any = None
        self._disable = disable

    def on_start(self) -> None:
        from tqdm.auto import tqdm

        self.on_finish()
        self._bar = tqdm(total=self.state.total, desc=self.state.desc, disable=self._disable, dynamic_ncols=True)

    def on_advance(self, n: int, info: dict[str, Any]) -> None:
        if self._bar is None:
            return
        self._bar.update(n)
        if info:
            self._bar.set_postfix({k: _short(v) for k, v in info.items()}, refresh=False)

    def on_message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def on_finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class CallbackProgress(Progress):
    """Progress for the UI or tests: every event goes to `callback(event, payload)`."""

    def __init__(self, callback: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        super().__init__()
        self.callback = callback or (lambda event, payload: None)
        self.messages: list[str] = []

    def on_start(self) -> None:
        self.callback("start", {"total": self.state.total, "desc": self.state.desc})

    def on_advance(self, n: int, info: dict[str, Any]) -> None:
        self.callback("advance", {"done": self.state.done, "total": self.state.total, **info})

    def on_message(self, text: str) -> None:
        self.messages.append(text)
        self.callback("message", {"text": text})

    def on_image(self, image: Any, caption: str, path: Any = None) -> None:
        self.callback("image", {"image": image, "caption": caption, "path": path})

    def on_finish(self) -> None:
        self.callback("finish", {})


def _short(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.4g}"
    return value
