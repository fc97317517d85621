"""Every odd kind of image file opens as upright 8-bit RGB, or is refused with a reason."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lib_sdtrain.dataset.images import ImageLoadError, dataset_images, list_images, load_image_rgb, scan_images
from lib_sdtrain.errors import DatasetError
from lib_sdtrain.utils.progress import CallbackProgress


def test_modes_become_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 0, 0)).save(tmp_path / "cmyk.jpg")
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.save(tmp_path / "transparent.png")
    Image.new("LA", (8, 8), (0, 255)).save(tmp_path / "la.png")
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "sixteen.png")

    assert load_image_rgb(tmp_path / "cmyk.jpg").getpixel((4, 4))[1] < 100  # magenta ink -> little green
    assert load_image_rgb(tmp_path / "transparent.png").getpixel((0, 0)) == (255, 255, 255)  # alpha on white
    assert load_image_rgb(tmp_path / "la.png").getpixel((0, 0)) == (0, 0, 0)
    assert load_image_rgb(tmp_path / "palette.png").getpixel((0, 0)) == (0, 0, 255)
    assert load_image_rgb(tmp_path / "sixteen.png").getpixel((0, 0)) == (255, 255, 255)
    for path in tmp_path.iterdir():
        assert load_image_rgb(path).mode == "RGB"


def test_exif_rotation_is_applied(tmp_path):
    im = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert load_image_rgb(tmp_path / "rotated.jpg").size == (10, 20)


def test_broken_files_have_reasons(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:60])
    reasons = {}
    for name in ("empty.png", "text.png", "cut.png", "missing.png"):
        with pytest.raises(ImageLoadError) as info:
            load_image_rgb(tmp_path / name)
        reasons[name] = info.value.reason
    assert reasons["empty.png"] == "empty file (0 bytes)"
    assert reasons["text.png"] == "not an image Pillow can read"
    assert reasons["cut.png"].startswith("unreadable image")
    assert reasons["missing.png"] == "file not found"
    with pytest.raises(ImageLoadError, match="too large"):
        load_image_rgb(tmp_path / "full.png", max_pixels=1000)


def test_list_images(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.PNG", "a.jpg", "notes.txt", "sub/c.webp"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG"]
    assert [p.name for p in list_images(tmp_path, recursive=True)] == ["a.jpg", "b.PNG", "c.webp"]
    with pytest.raises(DatasetError, match="not found"):
        list_images(tmp_path / "nope")


def test_what_is_left_out_is_named_with_a_reason(tmp_path):
    for name in ("a.png", "anim.gif", "scan.TIF", "photo.avif", "notes.txt", "a.caption"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "gone.png").symlink_to(tmp_path / "deleted.png")
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "folder.png" / "inner.jpg").write_bytes(b"x")
    listing = scan_images(tmp_path)
    assert [p.name for p in listing.images] == ["a.png"]
    reasons = {p.name: why for p, why in listing.skipped.items()}
    assert set(reasons) == {"anim.gif", "scan.TIF", "photo.avif", "gone.png", "folder.png"}  # not notes.txt
    assert "convert it to PNG" in reasons["anim.gif"] and ".tif is not" in reasons["scan.TIF"]
    assert "pillow-avif-plugin" in reasons["photo.avif"]
    assert reasons["gone.png"].startswith("broken link") and "deleted.png" in reasons["gone.png"]
    assert reasons["folder.png"].startswith("a folder")
    recursive = scan_images(tmp_path, recursive=True)  # the folder's images count then; it is not skipped
    assert [p.name for p in recursive.images] == ["a.png", "inner.jpg"] and "folder.png" not in str(recursive.skipped)

    progress = CallbackProgress()
    assert dataset_images(tmp_path, progress=progress).images == listing.images
    assert len(progress.messages) == 5 and all(m.startswith("skipped ") for m in progress.messages)
    (tmp_path / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"No images found in .* \(5 file\(s\) skipped, see above\)"):
        dataset_images(tmp_path)


def test_same_name_images_are_named_with_what_to_rename(tmp_path):
    for name in ("dup.jpg", "dup.png", "other.png"):
        (tmp_path / name).write_bytes(b"x")
    clashes = scan_images(tmp_path).name_clashes()
    assert list(clashes) == [tmp_path / "dup.png"]
    assert clashes[tmp_path / "dup.png"].startswith("same name as dup.jpg")
    assert "rename it, e.g. to dup_png.png" in clashes[tmp_path / "dup.png"]
