"""Training data: which images (or cached latents) with which captions, in which buckets, in which order.

Two layouts, as in kohya:
- fine-tune metadata: `in_json` (meta_clean.json or meta_lat.json) + `train_data_dir`; latents from
  `<train_data_dir>/<stem>.npz` when every image has one, else images encoded on the fly;
- a DreamBooth folder: images with caption files, directly in `train_data_dir` or in `N_name` sub-folders
  repeated N times (the folder name is the caption of images without a caption file).
All randomness (order, caption shuffling and dropout, flips) comes from generators seeded by (seed, epoch, index),
so an epoch is the same whether a run was resumed or not.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lib_sdtrain.dataset.images import ImageLoadError, list_images, load_image_rgb
from lib_sdtrain.dataset.metadata import read_caption_file
from lib_sdtrain.errors import DatasetError
from lib_sdtrain.prepare.buckets import BucketAssigner, BucketChoice, BucketSettings, resize_and_crop
from lib_sdtrain.train.config import TrainConfig

REPEAT_FOLDER = re.compile(r"^(\d+)_(.*)$")


@dataclass(frozen=True)
class TrainItem:
    key: str
    caption: str
    bucket: tuple[int, int]  # (width, height) in pixels
    image_path: Path | None = None
    latents_path: Path | None = None


def collect_items(config: TrainConfig) -> list[TrainItem]:
    root = Path(config.train_data_dir)
    if not root.is_dir():
        raise DatasetError(f"train_data_dir not found: {root}")
    items = _metadata_items(config, root) if config.in_json else _folder_items(config, root)
    if not items:
        raise DatasetError(f"No training images found in {root}.")
    return items


def _bucket_assigner(config: TrainConfig) -> BucketAssigner:
    return BucketAssigner(
        BucketSettings(
            max_resolution=config.resolution_size,
            min_bucket_reso=config.min_bucket_reso,
            max_bucket_reso=max(config.max_bucket_reso, *config.resolution_size),
            bucket_reso_steps=config.bucket_reso_steps,
        )
    )


def _image_bucket(path: Path, assigner: BucketAssigner) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return assigner.select(*im.size).bucket
    except OSError as e:
        raise DatasetError(f"Cannot read training image {path}: {e}") from e


def _metadata_items(config: TrainConfig, root: Path) -> list[TrainItem]:
    path = Path(config.in_json)  # type: ignore[arg-type]
    if not path.is_file():
        raise DatasetError(f"in_json not found: {path}. Run `sdtrain merge` (and `sdtrain buckets`) first.")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path.name} is not valid JSON: {e}") from e
    images = {p.stem: p for p in list_images(root)}
    assigner = None
    items = []
    for key, entry in metadata.items():
        image = Path(key) if Path(key).is_file() else images.get(Path(key).stem)
        latents = root / f"{Path(key).stem}.npz"
        caption = ", ".join(t for t in (entry.get("caption", "").strip(), entry.get("tags", "").strip()) if t)
        if "train_resolution" in entry:
            bucket = tuple(int(v) for v in entry["train_resolution"])
        elif image is not None:
            assigner = assigner or _bucket_assigner(config)
            bucket = _image_bucket(image, assigner)
        else:
            raise DatasetError(f"{key}: no image in {root} and no train_resolution in {path.name}")
        items.append(TrainItem(key, caption, bucket, image, latents if latents.is_file() else None))
    if any(i.latents_path is None for i in items):  # as kohya: cached latents only if all exist
        items = [TrainItem(i.key, i.caption, i.bucket, i.image_path, None) for i in items]
        missing = [i.key for i in items if i.image_path is None]
        if missing:
            raise DatasetError(f"{len(missing)} images have neither a file nor cached latents, e.g. {missing[:3]}")
    return [item for item in items for _ in range(config.dataset_repeats)]


def _folder_items(config: TrainConfig, root: Path) -> list[TrainItem]:
    groups: list[tuple[Path, int, str]] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if m := REPEAT_FOLDER.match(sub.name):
            groups.append((sub, int(m[1]), m[2].strip()))
    if not groups:
        groups = [(root, config.dataset_repeats, "")]
    assigner = _bucket_assigner(config)
    items = []
    for folder, repeats, class_caption in groups:
        for image in list_images(folder):
            caption_file = image.with_suffix(config.caption_extension)
            caption = _first_line(caption_file) if caption_file.is_file() else class_caption
            item = TrainItem(str(image.relative_to(root)), caption, _image_bucket(image, assigner), image)
            items.extend([item] * repeats)
    return items


def _first_line(path: Path) -> str:
    text, _ = read_caption_file(path)
    return text.splitlines()[0].strip() if text else ""


def epoch_batches(items: list[TrainItem], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of item indices for one epoch: shuffled, one bucket per batch, deterministic in (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for index in torch.randperm(len(items), generator=generator).tolist():
        by_bucket.setdefault(items[index].bucket, []).append(index)
    batches = [
        indices[i : i + batch_size]
        for _, indices in sorted(by_bucket.items())
        for i in range(0, len(indices), batch_size)
    ]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def process_caption(caption: str, config: TrainConfig, generator: torch.Generator) -> str:
    """kohya's caption augmentation: dropout of the whole caption, then shuffling of comma-separated tags after the
    first `keep_tokens` ones."""
    if config.caption_dropout_rate and torch.rand((), generator=generator).item() < config.caption_dropout_rate:
        return ""
    if config.shuffle_caption:
        tokens = [t.strip() for t in caption.split(",") if t.strip()]
        fixed, rest = tokens[: config.keep_tokens], tokens[config.keep_tokens :]
        rest = [rest[i] for i in torch.randperm(len(rest), generator=generator).tolist()]
        caption = ", ".join(fixed + rest)
    return caption


def load_pixels(item: TrainItem) -> torch.Tensor:
    """The item's image resized and centre-cropped to its bucket, as a [3, H, W] tensor in [-1, 1]."""
    assert item.image_path is not None
    try:
        image = load_image_rgb(item.image_path)
    except ImageLoadError as e:
        raise DatasetError(f"Cannot use training image {e.path}: {e.reason}") from e
    width, height = image.size
    scale = max(item.bucket[0] / width, item.bucket[1] / height)
    resized = (max(item.bucket[0], int(width * scale + 0.5)), max(item.bucket[1], int(height * scale + 0.5)))
    image = resize_and_crop(image, BucketChoice(item.bucket, resized, 0.0))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def load_cached_latents(item: TrainItem, flip: bool) -> torch.Tensor:
    """Unscaled latents from kohya's .npz (`latents`, or `arr_0` from v0.6); the flipped ones when asked for and
    cached (flipping latents is not flipping the image, so nothing is flipped without them)."""
    assert item.latents_path is not None
    with np.load(item.latents_path) as npz:
        key = "latents_flipped" if flip and "latents_flipped" in npz else ("latents" if "latents" in npz else "arr_0")
        return torch.from_numpy(npz[key].astype(np.float32))
