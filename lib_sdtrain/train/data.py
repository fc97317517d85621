"""Training data: which images (or cached latents) with which captions, in which buckets, in which order.

Three layouts, as in kohya:
- fine-tune metadata: `in_json` (meta_clean.json or meta_lat.json) + `train_data_dir`; latents from
  `<train_data_dir>/<stem>.npz` when every image has one, else images encoded on the fly;
- a DreamBooth folder: images with caption files, directly in `train_data_dir` or in `N_name` sub-folders
  repeated N times (the folder name is the caption of images without a caption file), plus regularisation images
  in `reg_data_dir`'s `N_name` folders;
- a `dataset_config` TOML whose subsets are such folders or metadata files (train/dataset_config.py).
Regularisation images are repeated or cut to the number of training images with repeats (kohya's DreamBoothDataset,
see balance_reg_repeats), and their loss is weighted by prior_loss_weight (loss_weights).
All randomness (order, caption shuffling and dropout, flips) comes from generators seeded by (seed, epoch, index),
so an epoch is the same whether a run was resumed or not.
"""

from __future__ import annotations

import dataclasses
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
from lib_sdtrain.train.dataset_config import Augment, Subset, read_dataset_config

REPEAT_FOLDER = re.compile(r"^(\d+)_(.*)$")


@dataclass(frozen=True)
class TrainItem:
    key: str
    caption: str
    bucket: tuple[int, int]  # (width, height) in pixels
    image_path: Path | None = None
    latents_path: Path | None = None
    is_reg: bool = False  # a regularisation image: its loss is weighted by prior_loss_weight
    augment: Augment | None = None  # its subset's caption/flip settings; None: the training config's


def collect_items(config: TrainConfig) -> list[TrainItem]:
    """Every item of one epoch, each image as often as its repeats say (regularisation images balanced)."""
    if config.dataset_config:
        where = Path(config.dataset_config)
        items = _subset_items(config, read_dataset_config(where, config).subsets)
    else:
        where = Path(config.train_data_dir)
        if not where.is_dir():
            raise DatasetError(f"train_data_dir not found: {where}")
        if config.in_json:
            items = _metadata_items(config, where, Path(config.in_json), config.dataset_repeats)
        else:
            items = _subset_items(config, _folder_subsets(config, where) + _reg_subsets(config))
    if not any(not item.is_reg for item in items):
        raise DatasetError(f"No training images found in {where}.")
    return items


def dataset_notes(config: TrainConfig) -> list[str]:
    """What a kohya user should know about where the data comes from (kohya logs the same)."""
    notes = []
    if config.dataset_config:
        unused = [key for key in ("train_data_dir", "in_json", "reg_data_dir") if getattr(config, key)]
        if unused:
            notes.append(f"dataset_config is given, so {', '.join(unused)} not used (as in kohya)")
    reg = reg_image_count(config)
    if reg:
        notes.append(
            f"{reg} regularisation images with repeats, repeated or cut to the number of training images with "
            f"repeats (kohya's rule); their loss is weighted by prior_loss_weight {config.prior_loss_weight:g}"
        )
    return notes


def loss_weights(batch: list[TrainItem], prior_loss_weight: float) -> torch.Tensor:
    """Per-item loss weights, as kohya's batch["loss_weights"]: prior_loss_weight for regularisation images."""
    return torch.tensor([prior_loss_weight if item.is_reg else 1.0 for item in batch])


def balance_reg_repeats(num_train: int, reg_repeats: list[int]) -> list[int]:
    """How often each regularisation image is used per epoch, as kohya's DreamBoothDataset decides: in order, whole
    images with their repeats until they cover `num_train` (the training images with repeats), the rest unused;
    when one pass is not enough, one more repeat each in turn until they do."""
    used = [0] * len(reg_repeats)
    total, first_pass = 0, True
    while reg_repeats and total < num_train:
        for i, repeats in enumerate(reg_repeats):
            added = repeats if first_pass else 1
            used[i] += added
            total += added
            if total >= num_train:
                break
        first_pass = False
    return used


def reg_image_count(config: TrainConfig) -> int:
    """kohya's ss_num_reg_images: regularisation images times their repeats, before balancing."""
    if config.dataset_config:
        subsets = [s for s in read_dataset_config(config.dataset_config, config).subsets if s.is_reg]
    else:
        subsets = _reg_subsets(config) if not config.in_json else []
    return sum(len(list_images(s.image_dir)) * s.num_repeats for s in subsets if s.image_dir and s.image_dir.is_dir())


def _bucket_assigner(config: TrainConfig, no_upscale: bool = False) -> BucketAssigner:
    return BucketAssigner(
        BucketSettings(
            max_resolution=config.resolution_size,
            min_bucket_reso=config.min_bucket_reso,
            max_bucket_reso=max(config.max_bucket_reso, *config.resolution_size),
            bucket_reso_steps=config.bucket_reso_steps,
            no_upscale=no_upscale,
        )
    )


# EXIF orientations that turn the stored image by 90 degrees (transpose, 90 CW, transverse, 90 CCW).
_SIDEWAYS_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112


def upright_size(path: Path) -> tuple[int, int]:
    """(width, height) as load_image_rgb will deliver the image (EXIF rotation applied), read from the header only
    so collecting a large dataset does not decode every image."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            width, height = im.size
            sideways = im.getexif().get(_EXIF_ORIENTATION) in _SIDEWAYS_ORIENTATIONS
    except OSError as e:
        raise DatasetError(f"Cannot read training image {path}: {e}") from e
    return (height, width) if sideways else (width, height)


def _image_bucket(path: Path, assigner: BucketAssigner) -> tuple[int, int]:
    return assigner.select(*upright_size(path)).bucket


def _metadata_items(
    config: TrainConfig, root: Path, path: Path, repeats: int, augment: Augment | None = None
) -> list[TrainItem]:
    if not path.is_file():
        raise DatasetError(f"in_json not found: {path}. Run `sdtrain merge` (and `sdtrain buckets`) first.")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path.name} is not valid JSON: {e}") from e
    images = {p.stem: p for p in list_images(root)}
    assigner = _bucket_assigner(config)
    items = []
    for key, entry in metadata.items():
        image = _find_image(key, images)
        latents = _latents_path(key, image, root)
        caption = ", ".join(t for t in (entry.get("caption", "").strip(), entry.get("tags", "").strip()) if t)
        if "train_resolution" in entry:
            bucket = tuple(int(v) for v in entry["train_resolution"])
        elif image is not None:
            bucket = _image_bucket(image, assigner)
        else:
            raise DatasetError(f"{key}: no image in {root} and no train_resolution in {path.name}")
        items.append(TrainItem(key, caption, bucket, image, latents if latents.is_file() else None, augment=augment))
    if any(i.latents_path is None for i in items):  # as kohya: cached latents only if all exist
        items = [dataclasses.replace(i, latents_path=None) for i in items]
        missing = [i.key for i in items if i.image_path is None]
        if missing:
            raise DatasetError(f"{len(missing)} images have neither a file nor cached latents, e.g. {missing[:3]}")
    else:
        # Latents prepared with --bucket_no_upscale have that rule's buckets; the training key names it.
        prepared = _bucket_assigner(config, no_upscale=config.ignored.get("bucket_no_upscale") is True)
        items = [dataclasses.replace(i, bucket=_cached_bucket(i, config, prepared)) for i in items]
    return [item for item in items for _ in range(repeats)]


def _find_image(key: str, images: dict[str, Path]) -> Path | None:
    """A key is the image's stem, or its path with --full_path (then possibly in a sub-folder)."""
    if Path(key).is_file():
        return Path(key)
    return images.get(key) or images.get(Path(key).stem)


def _latents_path(key: str, image: Path | None, root: Path) -> Path:
    # kohya: the .npz lies beside its image (in the image's sub-folder with --recursive --full_path); a stem key
    # without an image names <train_data_dir>/<key>.npz.
    if image is not None:
        return image.with_suffix(".npz")
    if Path(key).is_absolute() or "/" in key or "\\" in key:
        return Path(key).with_suffix(".npz")
    return root / f"{key}.npz"


def _cached_latents_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels of the latents in a kohya .npz."""
    try:
        with np.load(path) as npz:
            shape = npz["latents" if "latents" in npz.files else "arr_0"].shape
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise DatasetError(f"Cannot read cached latents {path}: {e}. Re-run Prepare (sdtrain buckets).") from e
    if len(shape) != 3:
        raise DatasetError(f"Cached latents {path} have the shape {shape}, not (4, H/8, W/8). Re-run Prepare.")
    return shape[2] * 8, shape[1] * 8


def _cached_bucket(item: TrainItem, config: TrainConfig, assigner: BucketAssigner) -> tuple[int, int]:
    """The item's bucket, checked against its latents: they must have the size of the image's bucket at this run's
    resolution (train_resolution when the image is gone). A stale cache would crash a batch (tensors of different
    sizes) or silently train at the old size. Refused rather than re-encoded, so a run never quietly takes the
    slow path or writes over the user's cache."""
    assert item.latents_path is not None
    cached = _cached_latents_size(item.latents_path)
    expected = _image_bucket(item.image_path, assigner) if item.image_path is not None else item.bucket
    if cached != expected:
        w, h = cached
        bw, bh = expected
        raise DatasetError(
            f"{item.latents_path}: the cached latents are {w}x{h} px, but at resolution {config.resolution} "
            f"this image's bucket is {bw}x{bh}. Re-run Prepare (sdtrain buckets) with max_resolution "
            f"{config.resolution} and the same bucket settings, or delete the .npz files to encode the images "
            "while training."
        )
    return expected


def _folder_subsets(config: TrainConfig, root: Path) -> list[Subset]:
    """train_data_dir's N_name folders (or the folder itself, repeated dataset_repeats times)."""
    subsets = _repeat_folders(config, root, is_reg=False, key_base=root)
    return subsets or [Subset(root, config.dataset_repeats, config.caption_extension, "", key_base=root)]


def _reg_subsets(config: TrainConfig) -> list[Subset]:
    if not config.reg_data_dir:
        return []
    root = Path(config.reg_data_dir)
    if not root.is_dir():
        raise DatasetError(f"reg_data_dir not found: {root}")
    subsets = _repeat_folders(config, root, is_reg=True, key_base=root.parent)
    if not subsets:
        raise DatasetError(f"reg_data_dir {root} has no N_name folders (e.g. 1_person) with images, as kohya reads it.")
    return subsets


def _repeat_folders(config: TrainConfig, root: Path, is_reg: bool, key_base: Path) -> list[Subset]:
    """kohya's N_name folders: N repeats, the name as class tokens; a folder with N < 1 is skipped, as in kohya."""
    subsets = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if (m := REPEAT_FOLDER.match(sub.name)) and int(m[1]) >= 1:
            subsets.append(Subset(sub, int(m[1]), config.caption_extension, m[2].strip(), is_reg, key_base=key_base))
    return subsets


def _subset_items(config: TrainConfig, subsets: tuple[Subset, ...] | list[Subset]) -> list[TrainItem]:
    """The epoch's items of DreamBooth-style (or, in a dataset_config, metadata) subsets."""
    assigner = _bucket_assigner(config)
    train: list[tuple[TrainItem, int]] = []
    reg: list[tuple[TrainItem, int]] = []
    for subset in subsets:
        if subset.metadata_file is not None:
            root = subset.image_dir or subset.metadata_file.parent
            train += [(item, 1) for item in _metadata_items(config, root, subset.metadata_file, subset.num_repeats,
                                                            subset.augment)]  # fmt: skip
            continue
        images = _subset_images(subset, assigner)
        (reg if subset.is_reg else train).extend((item, subset.num_repeats) for item in images)
    items = [item for item, repeats in train for _ in range(repeats)]
    used = balance_reg_repeats(len(items), [repeats for _, repeats in reg])
    return items + [item for (item, _), repeats in zip(reg, used, strict=True) for _ in range(repeats)]


def _subset_images(subset: Subset, assigner: BucketAssigner) -> list[TrainItem]:
    """One item per image of an image folder: the caption file's first line, else the class tokens."""
    folder = subset.image_dir
    assert folder is not None
    if subset.augment is not None:  # a dataset_config names its folders: a missing or empty one is a mistake
        if not folder.is_dir():
            raise DatasetError(f"dataset_config: image_dir not found: {folder}")
        if not list_images(folder):
            raise DatasetError(f"dataset_config: no images in image_dir {folder}")
    base = subset.key_base or folder.parent
    items = []
    for image in list_images(folder):
        caption_file = image.with_suffix(subset.caption_extension)
        caption = _first_line(caption_file) if caption_file.is_file() else (subset.class_tokens or "")
        bucket = _image_bucket(image, assigner)
        items.append(
            TrainItem(
                str(image.relative_to(base)), caption, bucket, image, is_reg=subset.is_reg, augment=subset.augment
            )
        )
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


def process_caption(caption: str, config: TrainConfig | Augment, generator: torch.Generator) -> str:
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
