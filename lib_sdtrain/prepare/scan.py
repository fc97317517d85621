"""One pass over the dataset images: open each (through dataset.images, so odd files are handled the same way as
everywhere else), pick its bucket, hash its bytes. Latent caching and the health report both start here."""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from PIL import Image

from lib_sdtrain.dataset.images import MAX_IMAGE_PIXELS, ImageLoadError, load_image_rgb
from lib_sdtrain.errors import DatasetError
from lib_sdtrain.prepare.buckets import BucketAssigner, BucketChoice, resize_and_crop

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class ImageRecord:
    path: Path
    key: str
    size: tuple[int, int] | None = None  # upright (EXIF applied) width, height
    choice: BucketChoice | None = None
    sha256: str | None = None  # of the file's bytes: "exact duplicate" means byte-identical files
    error: str | None = None  # why the image was left out

    @property
    def upscaled(self) -> bool:
        """The image is smaller than its bucket and gets enlarged."""
        if self.size is None or self.choice is None:
            return False
        return self.choice.resized_size[0] > self.size[0] or self.choice.resized_size[1] > self.size[1]

    @property
    def cropped(self) -> float:
        """The share of the (resized) picture cut off to fit its bucket: 0 when it fits."""
        if self.choice is None:
            return 0.0
        (bw, bh), (rw, rh) = self.choice.bucket, self.choice.resized_size
        return max(0.0, 1.0 - (bw * bh) / (rw * rh))


def inspect_image(
    path: Path,
    key: str,
    assigner: BucketAssigner,
    *,
    max_pixels: int = MAX_IMAGE_PIXELS,
    crop: bool = False,
) -> tuple[ImageRecord, Image.Image | None]:
    """Open one image and assign its bucket; with `crop`, also return it resized and cropped to the bucket.

    Never raises for a bad file: the record's `error` says what was wrong.
    """
    record = ImageRecord(path=path, key=key)
    try:
        record.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        image = load_image_rgb(path, max_pixels=max_pixels)
        record.size = image.size
        record.choice = assigner.select(*image.size)
    except ImageLoadError as e:
        record.error = e.reason
        return record, None
    except (OSError, DatasetError) as e:
        record.error = str(e)
        return record, None
    return record, resize_and_crop(image, record.choice) if crop else None


def prefetch(items: Iterable[T], work: Callable[[T], R], workers: int) -> Iterator[R]:
    """`work(item)` for each item, in order; with workers > 0 on that many threads, at most 2*workers ahead.

    Threads (not processes): Pillow releases the GIL while decoding and resizing, and threads work inside the
    WebUI's process without pickling anything.
    """
    if workers <= 0:
        yield from map(work, items)
        return
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sdtrain-load")
    pending: collections.deque[Future[R]] = collections.deque()
    try:
        for item in items:
            pending.append(executor.submit(work, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
