"""Finding and opening dataset images. Every stage (captioning, tagging, bucketing, training) opens images here,
so odd files are handled the same way everywhere: EXIF rotation applied, transparency put on white, CMYK, palette,
16-bit and greyscale turned into 8-bit RGB, and broken or oversized files refused with a reason."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lib_sdtrain.errors import DatasetError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
# The dataset report's bucket chart is written next to the metadata, which users keep in the image folder (the
# tutorial does): it must never be captioned, tagged or trained on.
REPORT_IMAGE_SUFFIX = ".buckets.png"
# Pillow's own guard (about 179 Mpx) warns first and fails only at twice that; we refuse at the limit itself.
MAX_IMAGE_PIXELS = 178_956_970


@dataclass
class ImageJobSummary:
    """What a per-image job (captioning, tagging) did, for the CLI and the UI to show."""

    written: int = 0
    skipped_existing: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason


def images_to_process(images: list[Path], extension: str, keep_existing: bool, summary: ImageJobSummary) -> list[Path]:
    """The images whose `<stem><extension>` file is to be written; existing files are counted and kept when asked."""
    todo = []
    for path in images:
        if keep_existing and path.with_suffix(extension).exists():
            summary.skipped_existing += 1
        else:
            todo.append(path)
    return todo


def image_batches(
    paths: list[Path], batch_size: int, summary: ImageJobSummary, progress
) -> Iterator[tuple[int, list[Path], list[Image.Image]]]:
    """Batches of (offset in `paths`, paths, RGB images), checking for cancel between batches. Unreadable files
    are recorded in `summary.failed` with their reason and skipped; progress advances once a batch is handled."""
    for start in range(0, len(paths), batch_size):
        progress.check_cancelled()
        chunk = paths[start : start + batch_size]
        batch, images = [], []
        for path in chunk:
            try:
                images.append(load_image_rgb(path))
                batch.append(path)
            except ImageLoadError as e:
                summary.failed[str(path)] = e.reason
                progress.message(f"skipped {path.name}: {e.reason}")
        if batch:
            yield start, batch, images
        progress.advance(len(chunk))


class ImageLoadError(DatasetError):
    """One image could not be used; `reason` is a short phrase for reports."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _optional_extensions() -> set[str]:
    extra = set()
    try:
        import pillow_avif  # noqa: F401  (registers AVIF with Pillow; the WebUI ships it)

        extra.add(".avif")
    except ImportError:
        pass
    return extra


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """The dataset's image files in `folder` (sorted), by extension in any case, without SD-Train's report charts.
    Raises DatasetError if the folder is missing."""
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"Image folder not found: {root}")
    extensions = IMAGE_EXTENSIONS | _optional_extensions()
    pattern = "**/*" if recursive else "*"
    return sorted(
        p
        for p in root.glob(pattern)
        if p.is_file() and p.suffix.lower() in extensions and not p.name.lower().endswith(REPORT_IMAGE_SUFFIX)
    )


def load_image_rgb(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open `path` as an upright 8-bit RGB image with transparency composited on white.

    Raises ImageLoadError (with a short reason) for empty, truncated, non-image and oversized files.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageLoadError(path, "empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > max_pixels:
                    raise ImageLoadError(path, f"too large ({im.width}x{im.height} pixels, limit {max_pixels})")
                im.load()
                return to_rgb(ImageOps.exif_transpose(im))
    except ImageLoadError:
        raise
    except FileNotFoundError as e:
        raise ImageLoadError(path, "file not found") from e
    except UnidentifiedImageError as e:
        raise ImageLoadError(path, "not an image Pillow can read") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(path, "too large (decompression-bomb guard)") from e
    except OSError as e:  # truncated data, broken headers
        raise ImageLoadError(path, f"unreadable image ({e})") from e
    except Exception as e:  # pragma: no cover - decoders raise assorted errors on crafted files
        raise ImageLoadError(path, f"unreadable image ({type(e).__name__}: {e})") from e


def to_rgb(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparent pixels become `background`."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale the used range into 0-255 instead of clipping everything to white.
        arr = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    if im.mode != "RGB":
        return im.convert("RGB")
    return im
