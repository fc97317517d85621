"""Finding and opening dataset images. Every stage (captioning, tagging, bucketing, training) opens images here,
so odd files are handled the same way everywhere: EXIF rotation applied, transparency put on white, CMYK, palette,
16-bit and greyscale turned into 8-bit RGB, and broken or oversized files refused with a reason."""

from __future__ import annotations

import errno
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lib_sdtrain.errors import DatasetError
from lib_sdtrain.utils.files import check_writable
from lib_sdtrain.utils.progress import Progress

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
# Picture formats that turn up in datasets but that kohya's trainers do not read either: named when skipped.
UNSUPPORTED_IMAGE_EXTENSIONS = frozenset(
    {".gif", ".tif", ".tiff", ".avif", ".heic", ".heif", ".jxl", ".svg", ".ico", ".psd", ".jp2"}
)
# The dataset report's bucket chart goes with the metadata, which users keep in the image folder (the tutorial
# does), so it lives in the hidden SIDE_FOLDER there: kohya's trainers list `*.png` of an image folder (not of its
# sub-folders) and skip a train_data_dir sub-folder without a repeat count. Charts that older versions wrote beside
# the metadata (`<name>.buckets.png`) are still left out of every listing.
SIDE_FOLDER = ".sdtrain"
REPORT_IMAGE_SUFFIX = ".buckets.png"


def report_chart_path(folder: Path, name: str) -> Path:
    return folder / SIDE_FOLDER / f"{name}{REPORT_IMAGE_SUFFIX}"


# Pillow's own guard (about 179 Mpx) warns first and fails only at twice that; we refuse at the limit itself.
MAX_IMAGE_PIXELS = 178_956_970


@dataclass
class ImageJobSummary:
    """What a per-image job (captioning, tagging) did, for the CLI and the UI to show."""

    written: int = 0
    skipped_existing: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason
    skipped: dict[str, str] = field(default_factory=dict)  # path -> why it was left out before opening it


def images_to_process(
    listing: ImageListing, extension: str, keep_existing: bool, summary: ImageJobSummary
) -> list[Path]:
    """The images whose `<stem><extension>` file is to be written; existing files are counted and kept when asked.
    Entries left out of the listing and name clashes go into `summary.skipped`, so nothing is overwritten twice."""
    clashes = listing.name_clashes()
    summary.skipped.update({str(path): reason for path, reason in {**listing.skipped, **clashes}.items()})
    todo = []
    for path in listing.images:
        if path in clashes:
            continue
        if keep_existing and path.with_suffix(extension).exists():
            summary.skipped_existing += 1
        else:
            todo.append(path)
    return todo


def image_batches(
    paths: list[Path],
    batch_size: int,
    summary: ImageJobSummary,
    progress: Progress,
    refuse: Callable[[Image.Image], str | None] | None = None,
) -> Iterator[tuple[int, list[Path], list[Image.Image]]]:
    """Batches of (offset in `paths`, paths, RGB images), checking for cancel between batches. Unreadable files,
    and images `refuse` gives a reason for, are recorded in `summary.failed` and skipped, so one odd image never
    takes its batch down; progress advances once a batch is handled."""
    for start in range(0, len(paths), batch_size):
        progress.check_cancelled()
        chunk = paths[start : start + batch_size]
        batch, images = [], []
        for path in chunk:
            try:
                image = load_image_rgb(path)
                reason = refuse(image) if refuse else None
                if reason:
                    raise ImageLoadError(path, reason)
                images.append(image)
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


@dataclass
class ImageListing:
    """A dataset folder's image files, and the image-like entries left out with the reason for each."""

    images: list[Path]
    skipped: dict[Path, str]

    def name_clashes(self) -> dict[Path, str]:
        """Images whose folder and stem an earlier image already has (dup.png after dup.jpg): they would share its
        caption, tag and latent files and its metadata key, so all but the first are left out, with what to do."""
        first: dict[Path, Path] = {}
        clashes = {}
        for path in self.images:
            owner = first.setdefault(path.with_suffix(""), path)
            if owner != path:
                clashes[path] = (
                    f"same name as {owner.name} (it would share {path.stem}.caption, {path.stem}.txt and "
                    f"{path.stem}.npz): rename it, e.g. to {path.stem}_{path.suffix[1:].lower()}{path.suffix}"
                )
        return clashes

    def folders(self) -> set[Path]:
        """The folders that hold the images (their caption, tag and latent files are written there)."""
        return {path.parent for path in self.images}


def scan_images(folder: str | Path, recursive: bool = False) -> ImageListing:
    """The image files in `folder` (sorted, by extension in any case, without SD-Train's report charts), and the
    entries that look like images but are left out: unsupported formats, broken links, folders named x.png.
    Raises DatasetError if the folder is missing."""
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"Image folder not found: {root}")
    usable = IMAGE_EXTENSIONS | _optional_extensions()
    entries, skipped = _entries(root, recursive)
    images = []
    for path in entries:
        suffix = path.suffix.lower()
        parts = path.relative_to(root).parts
        if path.name.lower().endswith(REPORT_IMAGE_SUFFIX) or SIDE_FOLDER in parts:
            continue
        if any(part.startswith(".") for part in parts):  # kohya's glob("*.png") never matches them either
            if suffix in usable:
                skipped[path] = "hidden file (its name starts with a dot; kohya leaves it out too)"
            continue
        if suffix in usable and path.is_file():
            images.append(path)
        elif suffix in usable and not (recursive and path.is_dir()):  # with --recursive a folder's images count
            skipped[path] = _not_a_file(path)
        elif suffix in UNSUPPORTED_IMAGE_EXTENSIONS:
            skipped[path] = _unsupported(suffix)
        elif not recursive and path.is_dir() and not path.name.startswith("."):
            inside = sum(1 for p in path.iterdir() if p.suffix.lower() in usable)
            if inside:
                skipped[path] = (
                    f"a sub-folder with {inside} image(s), not read: only this folder's images are (as kohya "
                    "reads them); use --recursive, or point at the sub-folder"
                )
    return ImageListing(images, skipped)


def _entries(root: Path, recursive: bool) -> tuple[list[Path], dict[Path, str]]:
    """The folder's entries, sorted (with `recursive`, its sub-folders' too, linked ones included), and the linked
    folders not read because they lead back to a folder already read (a loop)."""
    if not recursive:
        return sorted(root.iterdir()), {}
    found, loops, seen = [], {}, set()
    for folder, folders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            loops[Path(folder)] = "a link to a folder already read (a link loop): its images are read once"
            folders[:] = []
            continue
        seen.add(real)
        found += [Path(folder) / name for name in folders + files]
    return sorted(p for p in found if p not in loops), loops


def _not_a_file(path: Path) -> str:
    try:
        path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a link that points back to itself (a link loop): remove or fix the link"
    if path.is_symlink() and not path.exists():
        return f"broken link (its target {os.readlink(path)} does not exist)"
    if path.is_dir():
        return "a folder, not an image file (--recursive reads the images inside)"
    return "not a regular file"


def _unsupported(suffix: str) -> str:
    if suffix == ".avif":
        return "AVIF needs the pillow-avif-plugin package (pip install pillow-avif-plugin), or convert it to PNG"
    return f"{suffix} is not a training image format (kohya's trainers skip it too): convert it to PNG or JPEG"


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """The dataset's image files in `folder` (sorted), as scan_images finds them."""
    return scan_images(folder, recursive).images


def dataset_images(
    folder: str | Path,
    recursive: bool = False,
    progress: Progress | None = None,
    *,
    writable: bool = False,
    require_images: bool = True,
) -> ImageListing:
    """The images a stage works on, checked before any model is loaded: every entry left out (and every name
    clash) told through `progress`, a DatasetError when there is no image (unless not `require_images`), and with
    `writable` an OutputError when a folder that the stage writes files into is read-only."""
    listing = scan_images(folder, recursive)
    if progress is not None:
        for path, reason in {**listing.skipped, **listing.name_clashes()}.items():
            progress.message(f"skipped {path}: {reason}")
    if require_images and not listing.images:
        found = f" ({len(listing.skipped)} file(s) skipped, see above)" if listing.skipped else ""
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS | _optional_extensions()))
        raise DatasetError(f"No images found in {folder}{found}: nothing to do. Images are {extensions} files.")
    if writable:
        for path in sorted(listing.folders()):
            check_writable(path, "the captions, tags and latents are written beside the images")
    return listing


def load_image_rgb(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open `path` as an upright 8-bit RGB image with transparency composited on white.

    Raises ImageLoadError (with a short reason) for empty, truncated, non-image and oversized files.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageLoadError(path, "empty file (0 bytes)")
        with warnings.catch_warnings():  # the size check below is the limit, with a message that gives it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
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
        raise ImageLoadError(path, f"too large ({_pixel_count(e)}, limit {max_pixels} pixels)") from e
    except OSError as e:  # truncated data, broken headers
        raise ImageLoadError(path, f"unreadable image ({e})") from e
    except Exception as e:  # pragma: no cover - decoders raise assorted errors on crafted files
        raise ImageLoadError(path, f"unreadable image ({type(e).__name__}: {e})") from e


def _pixel_count(error: Exception) -> str:
    """The size Pillow's decompression-bomb guard saw, from its message ("Image size (400000000 pixels) ...")."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    return f"{int(found[1])} pixels" if found else "over Pillow's limit"


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
