from __future__ import annotations

import threading

import pytest

from lib_sdtrain.errors import Cancelled
from lib_sdtrain.utils.files import atomic_write_json, atomic_write_text, check_safe_name, resolve_inside
from lib_sdtrain.utils.progress import CallbackProgress


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "captions" / "a.txt"
    atomic_write_text(target, "first")
    assert target.read_text() == "first"

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(target, "second, never complete")
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]  # no temporary file left


def test_atomic_json_is_utf8_and_indented(tmp_path):
    path = tmp_path / "meta.json"
    atomic_write_json(path, {"img": {"caption": "café"}})
    assert path.read_text(encoding="utf-8") == '{\n  "img": {\n    "caption": "café"\n  }\n}\n'


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "", "a\\b", "x" * 200, "nul\x00"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(ValueError, match="Invalid"):
        check_safe_name(name)


@pytest.mark.parametrize("name", ["my_lora", "char-v2.1", "Style (test) [v3]"])
def test_ordinary_names_pass(name):
    assert check_safe_name(name) == name


def test_resolve_inside(tmp_path):
    assert resolve_inside(tmp_path, "sub/file.txt") == (tmp_path / "sub" / "file.txt").resolve()
    with pytest.raises(ValueError, match="outside"):
        resolve_inside(tmp_path, "../x")
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(ValueError, match="outside"):
        resolve_inside(tmp_path, "link/passwd")


def test_progress_events_eta_and_cancel_from_another_thread():
    events = []
    progress = CallbackProgress(lambda event, payload: events.append((event, payload)))
    progress.start(4, "work")
    progress.advance(1, loss=0.5)
    assert progress.state.eta_seconds is not None
    threading.Thread(target=progress.cancel).start()
    for _ in range(1000):
        if progress.cancelled:
            break
        threading.Event().wait(0.001)
    with pytest.raises(Cancelled):
        progress.check_cancelled()
    progress.message("kept 3 files")
    assert events[0] == ("start", {"total": 4, "desc": "work"})
    assert events[1] == ("advance", {"done": 1, "total": 4, "loss": 0.5})
    assert progress.messages == ["kept 3 files"]
