"""Small pieces every tab uses: messages, the job status line, folder choices, starting a job from a form."""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lib_sdtrain.errors import SDTrainError
from lib_sdtrain.utils.status import Status


def message_html(text: str, kind: str = "info", field: str = "") -> str:
    """A message under a form: kind is info, ok or error. A message about one `field` is also shown beside that
    field by javascript/sdtrain.js (the component whose elem_classes hold field_classes(field))."""
    if not text:
        return ""
    # data-shown makes each such message new HTML, so the page shows the note again for the same error
    about = f' data-field="{html.escape(field)}" data-shown="{time.monotonic_ns()}"' if field else ""
    return f'<div class="sdtrain-message sdtrain-{kind}"{about}>{html.escape(text).replace(chr(10), "<br>")}</div>'


def field_classes(*names: str) -> list[str]:
    """elem_classes marking a component as the field for these option names, so an error naming one of them is
    shown beside it."""
    return [f"sdtrain-field-{name}" for name in names]


def error_for(e: Exception) -> str:
    """The message of an expected error, with the field at fault first when the error names one."""
    field = getattr(e, "field", "")
    text = str(e) if isinstance(e, SDTrainError | ValueError) else f"{type(e).__name__}: {e}"
    return message_html(f"{field}: {text}" if field and not text.startswith(field) else text, "error", field)


def start_job(kind: str, options: Callable[[], dict[str, Any]], note: str = "") -> str:
    """Start a stage through the runner with the options `options()` builds (it may raise on a bad field);
    a message for the form either way."""
    from lib_sdtrain.jobs import runner

    try:
        job = runner().start(kind, options())
    except Exception as e:
        return error_for(e)
    return message_html(f"Started {job.title}." + (f" {note}" if note else ""), "ok")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def status_html(snapshot: dict[str, Any] | None) -> str:
    """The job line shown on every tab: what runs, how far, how fast, how long still."""
    if snapshot is None:
        return '<div class="sdtrain-status sdtrain-idle">No job running.</div>'
    s = snapshot
    done, total = s["done"], s["total"]
    percent = 100.0 * done / total if total else 0.0
    running = s["status"] == Status.RUNNING
    parts = [f"<b>{html.escape(s['title'])}</b>", html.escape(s["status"])]
    if running:
        parts.append(html.escape(s["phase"]))
        if total:
            parts.append(f"{done}/{total}")
        info = s["info"]
        if "epoch" in info:
            parts.append(f"epoch {info['epoch']}")
        if s["rate"]:
            parts.append(f"{s['rate']:.2f} it/s" if s["rate"] >= 1 else f"{1 / s['rate']:.1f} s/it")
        parts.append(f"ETA {duration(s['eta_seconds'])}")
        if "loss" in info:
            parts.append(f"loss {info['loss']:.4f}")
    else:
        parts.append(f"after {duration(s['elapsed_seconds'])}")
    bar = f'<div class="sdtrain-bar"><div style="width:{percent:.1f}%"></div></div>' if running else ""
    error = f'<div class="sdtrain-error">{html.escape(s["error"])}</div>' if s.get("error") else ""
    return f'<div class="sdtrain-status sdtrain-{s["status"]}">{" · ".join(parts)}{bar}{error}</div>'


def subfolders(root: Path) -> list[str]:
    """Folders directly under `root`, by name: the dataset dropdown's choices."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def resolve_folder(value: str, root: Path) -> Path:
    """A dropdown value: a name under `root`, or a typed path."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / value
