"""Uploaded zip files: links and climbing paths are never unpacked, zip bombs and archives larger than the free
space are refused before anything is written, and each left-out entry is named with the reason."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from lib_sdtrain.dataset.editing import import_files
from lib_sdtrain.errors import DatasetError


def png_bytes(colour: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, "PNG")
    return buffer.getvalue()


def make_zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return path


def link_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (0o120777 << 16) | 0x20  # a symbolic link, as `zip --symlinks` stores one
    return info, target.encode()


def test_links_and_climbing_paths_are_left_out_and_named(tmp_path):
    archive = make_zip(
        tmp_path / "upload.zip",
        [
            ("good.png", png_bytes()),
            link_entry("passwd.png", "/etc/passwd"),
            ("../escape.png", png_bytes("blue")),
            ("/abs/rooted.png", png_bytes("green")),
            ("sub/.hidden.png", png_bytes()),
        ],
    )
    result = import_files([archive], tmp_path / "datasets", "new")
    assert [p.name for p in result.added] == ["good.png"]
    assert "symbolic link" in result.skipped["passwd.png"]
    assert "leaves the archive" in result.skipped["../escape.png"]
    assert "leaves the archive" in result.skipped["/abs/rooted.png"]
    assert "hidden" in result.skipped["sub/.hidden.png"]
    assert sorted(p.name for p in (tmp_path / "datasets" / "new").iterdir()) == ["good.png"]
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "datasets" / "escape.png").exists()


def test_a_zip_bomb_is_refused_before_it_is_unpacked(tmp_path):
    archive = make_zip(tmp_path / "bomb.zip", [("huge.png", b"\0" * (40 * 2**20)), ("fine.png", png_bytes())])
    assert archive.stat().st_size < 2**20
    result = import_files([archive], tmp_path / "datasets", "bombed")
    assert "zip bomb" in result.skipped["huge.png"]
    assert [p.name for p in result.added] == ["fine.png"]
    assert not (tmp_path / "datasets" / "bombed" / "huge.png").exists()


def test_an_archive_larger_than_the_free_space_is_refused_whole(tmp_path, tmpfs, monkeypatch):
    import lib_sdtrain.dataset.editing as editing

    monkeypatch.setattr(editing, "FREE_SPACE_MARGIN", 0)  # the 1 MiB tmpfs is smaller than the usual margin
    archive = make_zip(tmp_path / "big.zip", [(f"noise{i}.png", os.urandom(400_000)) for i in range(4)])
    with pytest.raises(DatasetError, match="nothing was unpacked"):
        import_files([archive], tmpfs, "full")
    assert not any((tmpfs / "full").iterdir())


def test_a_file_still_uploading_says_so(tmp_path):
    partial = tmp_path / "partial.zip"
    partial.write_bytes(make_zip(tmp_path / "whole.zip", [("a.png", png_bytes())]).read_bytes()[:40])
    result = import_files([partial], tmp_path / "datasets", "partial")
    assert "still uploading" in result.skipped["partial.zip"]
