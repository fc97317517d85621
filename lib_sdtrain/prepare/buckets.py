"""Aspect-ratio buckets as kohya sd-scripts makes and assigns them (model_util.make_bucket_resolutions and
train_util.BucketManager, re-implemented), so `train_resolution` values and latent shapes match kohya's exactly."""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

from lib_sdtrain.errors import ConfigError, DatasetError

Size = tuple[int, int]  # (width, height), as kohya stores it


def parse_resolution(text: str) -> Size:
    """'W,H' (or a single 'S' for a square) -> (W, H)."""
    try:
        parts = [int(t) for t in str(text).replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise ConfigError(f"Resolution {text!r} is not 'width,height' (for example '512,512').")
    return parts[0], parts[1]


def make_bucket_resolutions(
    max_reso: Size, min_size: int = 256, max_size: int = 1024, divisible: int = 64
) -> list[Size]:
    """All bucket sizes with an area of at most max_reso's area: the largest square, then for each width from
    min_size to max_size (step `divisible`) the tallest height that fits the area (capped at max_size, floored to
    `divisible`), with its transpose. Sorted by (width, height)."""
    max_area = max_reso[0] * max_reso[1]
    side = int(math.sqrt(max_area) // divisible) * divisible
    resos = {(side, side)}
    for width in range(min_size, max_size + 1, divisible):
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
    return sorted(resos)


@dataclass(frozen=True)
class BucketChoice:
    bucket: Size  # the crop the image is trained at
    resized_size: Size  # the image is resized to this first (covering the bucket), then centre-cropped
    ar_error: float  # bucket aspect ratio minus image aspect ratio

    @property
    def train_resolution(self) -> Size:
        # Latents are 1/8 of the image, so kohya records the bucket floored to multiples of 8.
        return self.bucket[0] - self.bucket[0] % 8, self.bucket[1] - self.bucket[1] % 8


@dataclass(frozen=True)
class BucketSettings:
    max_resolution: Size = (512, 512)
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    no_upscale: bool = False

    def validate(self) -> None:
        if self.bucket_reso_steps <= 0:
            raise ConfigError("--bucket_reso_steps must be a positive number (64 is usual).")
        if self.no_upscale:
            return  # min/max bucket sizes are not used then (kohya ignores them too)
        if self.max_bucket_reso < max(self.max_resolution):
            raise ConfigError(
                f"--max_bucket_reso {self.max_bucket_reso} is smaller than a side of --max_resolution "
                f"{self.max_resolution[0]},{self.max_resolution[1]}."
            )
        if self.max_bucket_reso < self.min_bucket_reso:
            raise ConfigError(f"--max_bucket_reso {self.max_bucket_reso} is smaller than --min_bucket_reso.")


class BucketAssigner:
    """Picks the bucket and resize for each image, as kohya's BucketManager.select_bucket does."""

    def __init__(self, settings: BucketSettings) -> None:
        settings.validate()
        self.settings = settings
        self.resolutions: list[Size] = []
        if not settings.no_upscale:
            self.resolutions = make_bucket_resolutions(
                settings.max_resolution, settings.min_bucket_reso, settings.max_bucket_reso, settings.bucket_reso_steps
            )
        self._resolution_set = set(self.resolutions)

    def select(self, width: int, height: int) -> BucketChoice:
        if self.settings.no_upscale:
            bucket, resized = self._select_without_upscale(width, height)
        else:
            bucket, resized = self._select_predefined(width, height)
        return BucketChoice(bucket, resized, bucket[0] / bucket[1] - width / height)

    def _select_predefined(self, width: int, height: int) -> tuple[Size, Size]:
        aspect = width / height
        if (width, height) in self._resolution_set:
            bucket = (width, height)
        else:
            # First of the sorted buckets with the smallest |aspect error| (numpy argmin's tie rule in kohya).
            bucket = min(self.resolutions, key=lambda r: abs(r[0] / r[1] - aspect))
        # Scale so the image covers the bucket: match the side that is relatively shorter.
        scale = bucket[1] / height if aspect > bucket[0] / bucket[1] else bucket[0] / width
        return bucket, (int(width * scale + 0.5), int(height * scale + 0.5))

    def _select_without_upscale(self, width: int, height: int) -> tuple[Size, Size]:
        steps = self.settings.bucket_reso_steps
        max_area = self.settings.max_resolution[0] * self.settings.max_resolution[1]
        aspect = width / height
        if width * height > max_area:
            # Shrink to the maximum area keeping the aspect ratio; round one side to `steps`, whichever side
            # keeps the aspect ratio closer.
            target_w = math.sqrt(max_area * aspect)
            target_h = max_area / target_w
            w_rounded = _round_to_steps(target_w, steps)
            ar_w = w_rounded / _round_to_steps(w_rounded / aspect, steps)
            h_rounded = _round_to_steps(target_h, steps)
            ar_h = _round_to_steps(h_rounded * aspect, steps) / h_rounded
            if abs(ar_w - aspect) < abs(ar_h - aspect):
                resized = (w_rounded, int(w_rounded / aspect + 0.5))
            else:
                resized = (int(h_rounded * aspect + 0.5), h_rounded)
        else:
            resized = (width, height)
        bucket = (resized[0] - resized[0] % steps, resized[1] - resized[1] % steps)
        if min(bucket) <= 0:
            raise DatasetError(f"{width}x{height} is smaller than one bucket step ({steps} px)")
        return bucket, resized


def _round_to_steps(x: float, steps: int) -> int:
    rounded = int(x + 0.5)
    return rounded - rounded % steps


def crop_ltrb(bucket: Size, image_size: Size) -> tuple[float, float, float, float]:
    """kohya's `crop_ltrb` (Stability AI's SDXL convention): where the image would sit if fitted INSIDE the bucket,
    in bucket pixels. Stored in the .npz for SDXL size conditioning; computed the same way so files match."""
    bucket_ar = bucket[0] / bucket[1]
    image_ar = image_size[0] / image_size[1]
    width: float
    height: float
    if bucket_ar > image_ar:
        width, height = bucket[1] * image_ar, bucket[1]
    else:
        width, height = bucket[0], bucket[0] / image_ar
    left = (bucket[0] - width) // 2
    top = (bucket[1] - height) // 2
    return left, top, left + width, top + height


def resize_and_crop(image: Image.Image, choice: BucketChoice) -> Image.Image:
    """Resize to `choice.resized_size` and centre-crop to the bucket (kohya's trim_and_resize_if_required).

    kohya (v0.7+) shrinks with OpenCV's INTER_AREA and enlarges with Pillow's LANCZOS. OpenCV is not a dependency
    here: shrinking uses Pillow's BOX filter, the same pixel-area average for integer factors and a close one
    otherwise, so cached latents can differ from kohya's by resampling noise, never in size or placement.
    """
    if image.size != choice.resized_size:
        shrinking = image.width > choice.resized_size[0] and image.height > choice.resized_size[1]
        resample = Image.Resampling.BOX if shrinking else Image.Resampling.LANCZOS
        image = image.resize(choice.resized_size, resample)
    left = (image.width - choice.bucket[0]) // 2
    top = (image.height - choice.bucket[1]) // 2
    if (left, top) != (0, 0) or image.size != choice.bucket:
        image = image.crop((left, top, left + choice.bucket[0], top + choice.bucket[1]))
    return image
