from __future__ import annotations

import os
import stat
import threading

import numpy as np
import pytest

from lib_sdtrain.errors import Cancelled, OutputError
from lib_sdtrain.utils.files import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    check_safe_name,
    check_writable,
    make_folder_beside,
    resolve_inside,
)
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


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_get_the_mode_open_gives_under_the_umask(tmp_path, umask):
    from lib_sdtrain.dataset.metadata import MergeOptions, merge_to_file

    (tmp_path / "data").mkdir()
    previous = os.umask(umask)
    try:
        (tmp_path / "data" / "a.png").write_bytes(b"not opened by merge")
        atomic_write_text(tmp_path / "data" / "a.caption", "a cat")
        with atomic_path(tmp_path / "data" / "a.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, latents=np.zeros(2))
        merge_to_file(tmp_path / "data", tmp_path / "out" / "meta_clean.json", MergeOptions())
        with open(tmp_path / "plain.txt", "w") as f:  # what the others should match
            f.write("x")
        staging = make_folder_beside(tmp_path / "model", "partial")  # the demo builds its models in these
    finally:
        os.umask(previous)
    assert staging.name.startswith(".model.partial-") and stat.S_IMODE(staging.stat().st_mode) == 0o777 & ~umask
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*") if p.is_file()}
    assert modes == dict.fromkeys(["a.png", "a.caption", "a.npz", "meta_clean.json", "plain.txt"], 0o666 & ~umask)

    (tmp_path / "data" / "a.caption").chmod(0o640)  # replacing a file keeps its mode, as open() does
    atomic_write_text(tmp_path / "data" / "a.caption", "a dog")
    assert stat.S_IMODE((tmp_path / "data" / "a.caption").stat().st_mode) == 0o640


def test_check_writable_names_the_folder(tmp_path, tmpfs):
    from tests.mounts import remount_read_only

    check_writable(tmp_path / "not" / "made" / "yet", "x")  # atomic_path would create it under tmp_path
    remount_read_only(tmpfs)
    with pytest.raises(OutputError, match=rf"Cannot write in {tmpfs} \(Read-only file system\): meta.json is"):
        check_writable(tmpfs / "sub", "meta.json is written there")
    assert list(tmpfs.iterdir()) == []


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
