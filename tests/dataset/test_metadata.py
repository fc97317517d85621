"""Merging caption/tag files into kohya's metadata JSON, and kohya's cleaning rules (expected values by hand)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from lib_sdtrain.dataset.metadata import (
    MergeOptions,
    clean_caption,
    clean_tags,
    merge_to_file,
    read_caption_file,
)
from lib_sdtrain.errors import Cancelled, ConfigError, DatasetError
from lib_sdtrain.main import main
from lib_sdtrain.utils.progress import CallbackProgress


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        # underscores become spaces, but the ^_^ emoticon stays
        ("long_hair, ^_^, looking_at_viewer", "long hair, ^_^, looking at viewer"),
        # DeepDanbooru's trailing rating tags are cut off
        ("1girl, solo, rating:safe, rating:questionable", "1girl, solo"),
        # no girls/boys: several hair colours are kept ("1girl" does not contain "girls")
        ("1girl, blonde hair, black hair", "1girl, blonde hair, black hair"),
        # two girls: both eye colours and both hair colours go; the single hair length stays
        ("2girls, blonde hair, black hair, long hair, blue eyes, red eyes, smile", "2girls, long hair, smile"),
        # two girls with two hair lengths: the lengths conflict too (and then one colour is left alone)
        ("multiple girls, long hair, short hair, red hair", "multiple girls, red hair"),
        # a one-word tag that a longer tag ends with is dropped; "hair ornament" counts as one word
        ("shirt, white shirt, smile", "white shirt, smile"),
        ("hair ornament, red hair ornament", "red hair ornament"),
        # the longer tag must end with the word: "shirt" stays beside "shirt collar"
        ("shirt, shirt collar", "shirt, shirt collar"),
        ("", ""),
    ],
)
def test_clean_tags(raw, cleaned):
    assert clean_tags(raw) == cleaned


def test_clean_caption():
    # "young " removed, "anime woman" -> "girl", "person" -> "girl"
    assert clean_caption("a young anime woman next to a person") == "a girl next to a girl"
    # "anime anime" is replaced until none is left, then "anime girl" -> "girl"
    assert clean_caption("anime anime anime girl") == "girl"
    assert clean_caption("a cartoon drawing of women") == "a drawing of girls"


def test_caption_file_encodings(tmp_path):
    (tmp_path / "plain.caption").write_bytes("a café\n".encode())
    (tmp_path / "bom.caption").write_bytes(b"\xef\xbb\xbfa cat ")
    (tmp_path / "win.caption").write_bytes(b"caf\xe9 \x93quoted\x94")
    (tmp_path / "wide.caption").write_bytes("a dog".encode("utf-16"))
    assert read_caption_file(tmp_path / "plain.caption") == ("a café", None)
    assert read_caption_file(tmp_path / "bom.caption") == ("a cat", None)
    text, warning = read_caption_file(tmp_path / "win.caption")
    assert text == "café “quoted”" and "cp1252" in warning and "win.caption" in warning
    text, warning = read_caption_file(tmp_path / "wide.caption")
    assert text == "a dog" and "UTF-16" in warning


def _image(path, size=(8, 8)):
    Image.new("RGB", size, (10, 20, 30)).save(path)


@pytest.fixture
def captioned(tmp_path):
    """a: caption+tags, b: caption only, c: nothing, d: cp1252 caption + tags."""
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("a.png", "b.jpg", "c.png", "d.webp"):
        _image(folder / name)
    (folder / "a.caption").write_text("a young woman\n", encoding="utf-8")
    (folder / "a.txt").write_text("long_hair, shirt, white_shirt", encoding="utf-8")
    (folder / "b.caption").write_text("a dog", encoding="utf-8")
    (folder / "d.caption").write_bytes(b"caf\xe9 scene")
    (folder / "d.txt").write_text("outdoors", encoding="utf-8")
    return folder


def test_merge_new_file(captioned, tmp_path):
    out = tmp_path / "meta_clean.json"
    result = merge_to_file(captioned, out, MergeOptions())
    text = out.read_text(encoding="utf-8")
    assert text.startswith('{\n  "a": {\n    "caption"')  # indent 2, kohya's layout
    assert json.loads(text) == {
        "a": {"caption": "a young woman", "tags": "long_hair, shirt, white_shirt"},
        "b": {"caption": "a dog"},
        "c": {},
        "d": {"caption": "café scene", "tags": "outdoors"},
    }
    assert [p.name for p in result.missing_captions] == ["c.png"]
    assert [p.name for p in result.missing_tags] == ["b.jpg", "c.png"]
    assert (result.images, result.captions, result.tags) == (4, 3, 2)
    assert len(result.warnings) == 1 and "d.caption" in result.warnings[0] and "cp1252" in result.warnings[0]
    assert "1 image(s) without a caption file: c.png" in result.summary()
    assert sorted(p.name for p in out.parent.iterdir()) == ["data", "meta_clean.json"]  # no temporary files left


def test_merge_into_existing_and_clean(captioned, tmp_path):
    out = tmp_path / "meta_clean.json"
    out.write_text(json.dumps({"a": {"caption": "old", "extra": 1}, "z": {"caption": "other folder"}}))
    merge_to_file(captioned, out, MergeOptions(clean=True))
    merged = json.loads(out.read_text(encoding="utf-8"))
    assert merged["a"] == {"caption": "a girl", "tags": "long hair, white shirt", "extra": 1}
    assert merged["z"] == {"caption": "other folder"}  # entries from elsewhere are kept (and cleaned)

    other = tmp_path / "in.json"
    other.write_text(json.dumps({"b": {"tags": "kept"}}))
    merge_to_file(captioned, tmp_path / "fresh.json", MergeOptions(), in_json=other)
    assert json.loads((tmp_path / "fresh.json").read_text())["b"] == {"tags": "kept", "caption": "a dog"}


def test_full_path_and_recursive_keys(captioned, tmp_path):
    (captioned / "sub").mkdir()
    _image(captioned / "sub" / "a.png")
    out = tmp_path / "full.json"
    with pytest.raises(ConfigError, match="--full_path"):
        merge_to_file(captioned, out, MergeOptions(recursive=True))
    merge_to_file(captioned, out, MergeOptions(full_path=True, recursive=True))
    keys = set(json.loads(out.read_text()))
    assert keys == {str(captioned / n) for n in ("a.png", "b.jpg", "c.png", "d.webp", "sub/a.png")}


def test_bad_inputs_lose_nothing(captioned, tmp_path):
    out = tmp_path / "meta.json"
    out.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        merge_to_file(captioned, out, MergeOptions())
    assert out.read_text() == "{not json"
    with pytest.raises(DatasetError, match="not found"):
        merge_to_file(tmp_path / "missing", tmp_path / "x.json", MergeOptions())
    assert not (tmp_path / "x.json").exists()

    progress = CallbackProgress(lambda event, payload: progress.cancel() if event == "advance" else None)
    good = tmp_path / "good.json"
    good.write_text('{"a": {"caption": "keep me"}}')
    with pytest.raises(Cancelled):
        merge_to_file(captioned, good, MergeOptions(), progress=progress)
    assert good.read_text() == '{"a": {"caption": "keep me"}}'


def test_merge_cli(captioned, tmp_path, capsys):
    out = tmp_path / "meta_clean.json"
    code = main(["merge", str(captioned), str(out), "--clean_caption", "--caption_extension", "caption"])
    assert code == 0
    assert json.loads(out.read_text())["a"]["caption"] == "a girl"
    printed = capsys.readouterr().out
    assert "without a tag file" in printed and "cp1252" in printed

    assert main(["merge", str(tmp_path / "nope"), str(out)]) == 1
    assert "Image folder not found" in capsys.readouterr().err
