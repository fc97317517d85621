"""Training data: which images (or cached latents) with which captions, in which buckets, in which order.

Three layouts, as in kohya:
- fine-tune metadata: `in_json` (meta_clean.json or meta_lat.json) + `train_data_dir`; latents from
  `<train_data_dir>/<stem>.npz` when every image has one, else images encoded on the fly;
- a DreamBooth folder: images with caption files, directly in `train_data_dir` or in `N_name` sub-folders
  repeated N times (the folder name is the caption of images without a caption file), plus regularisation images
  in `reg_data_dir`'s `N_name` folders;
- a `dataset_config` TOML whose subsets are such folders or metadata files (train/dataset_config.py).
Regularisation images are repeated or cut to the number of training images with repeats (kohya's DreamBoothDataset,
see balance_reg_repeats), and their loss is weighted by prior_loss_weight (loss_weights). A dataset_config with
several [[datasets]] gives each item its dataset's index and batch size; a batch holds one dataset's items only.
All randomness (order, caption processing, flips, crops, colour) comes from generators seeded by (seed, epoch,
index), so an epoch is the same whether a run was resumed or not.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lib_sdtrain.dataset.images import ImageLoadError, list_images, load_image_rgb
from lib_sdtrain.dataset.metadata import load_metadata, read_caption_file
from lib_sdtrain.errors import ConfigError, DatasetError
from lib_sdtrain.prepare.buckets import BucketAssigner, BucketChoice, BucketSettings, resize_and_crop
from lib_sdtrain.prepare.latents import flip_npz_path_for  # <stem>_flip.npz beside <stem>.npz or its image
from lib_sdtrain.train.config import TrainConfig
from lib_sdtrain.train.dataset_config import AUGMENT_KEYS, Augment, Subset, check_augment, read_dataset_config

REPEAT_FOLDER = re.compile(r"^(\d+)_(.*)$")


@dataclass(frozen=True)
class TrainItem:
    key: str
    caption: str
    bucket: tuple[int, int]  # (width, height) in pixels
    image_path: Path | None = None
    latents_path: Path | None = None
    is_reg: bool = False  # a regularisation image: its loss is weighted by prior_loss_weight
    augment: Augment | None = None  # its subset's caption/image settings; None: the training config's
    resized: tuple[int, int] | None = None  # the image is resized to this, then cropped; None: to cover the bucket
    dataset: int = 0  # its [[datasets]] block: batches never mix datasets
    batch_size: int | None = None  # its dataset's batch size; None: the training config's


def collect_items(config: TrainConfig) -> list[TrainItem]:
    """Every item of one epoch, each image as often as its repeats say (regularisation images balanced)."""
    check_augment(config)
    if config.dataset_config:
        where = Path(config.dataset_config)
        items = _dataset_config_items(config, where)
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
    flat = Augment(**{key: getattr(config, key) for key in AUGMENT_KEYS})
    items = [item if item.augment else dataclasses.replace(item, augment=flat) for item in items]
    _check_latent_caching(config, items)
    return items


def _dataset_config_items(config: TrainConfig, path: Path) -> list[TrainItem]:
    """Each [[datasets]] block's items with its own settings (resolution, batch size, buckets), as kohya's
    DatasetGroup concatenates its datasets."""
    items = []
    for index, dataset in enumerate(read_dataset_config(path, config).datasets):
        own = dataclasses.replace(config, **dataset.settings)
        batch = own.train_batch_size
        items += [dataclasses.replace(i, dataset=index, batch_size=batch) for i in _subset_items(own, dataset.subsets)]
    return items


PER_STEP_PIXELS = ("random_crop", "color_aug")  # options that change an image's pixels at every step


def latents_cacheable(items: list[TrainItem], config: TrainConfig) -> bool:
    """kohya's is_latent_cacheable: no item's pixels change from step to step."""
    return not any(getattr(item.augment or config, key) for item in items for key in PER_STEP_PIXELS)


def _check_latent_caching(config: TrainConfig, items: list[TrainItem]) -> None:
    """kohya refuses random_crop and color_aug with cache_latents (a cache would freeze one crop or colour). SD-Train
    caches by default and then encodes such images at every step; a config that asks for caching is refused."""
    asked = (config.cache_latents and "cache_latents" in config.given) or config.cache_latents_to_disk
    if asked and not latents_cacheable(items, config):
        key = "cache_latents_to_disk" if config.cache_latents_to_disk else "cache_latents"
        raise ConfigError(
            f"{key} = true cannot be used with random_crop or color_aug, which change the pixels at every step (as in "
            "kohya); set cache_latents = false and cache_latents_to_disk = false, or turn those augmentations off."
        )


def dataset_notes(config: TrainConfig) -> list[str]:
    """What a kohya user should know about where the data comes from (kohya logs the same)."""
    notes = []
    if config.dataset_config:
        unused = [key for key in ("train_data_dir", "in_json", "reg_data_dir") if getattr(config, key)]
        if unused:
            notes.append(f"dataset_config is given, so {', '.join(unused)} not used (as in kohya)")
    if config.in_json and not config.dataset_config and (config.random_crop or config.color_aug):
        notes.append("random_crop / color_aug: cached latents (.npz) are not used, the images are (as in kohya)")
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


BucketSelector = Callable[[tuple[int, int]], BucketChoice]


def _bucket_selector(config: TrainConfig) -> BucketSelector:
    """(width, height) of an image -> its bucket and resize, by the config's bucket settings: kohya's
    BucketManager, or with enable_bucket off its one bucket at `resolution`."""
    if not config.enable_bucket:
        return lambda size: _cover_choice(size, config.resolution_size)
    assigner = _bucket_assigner(config, config.bucket_no_upscale)
    return lambda size: assigner.select(*size)


def _cover_choice(size: tuple[int, int], bucket: tuple[int, int]) -> BucketChoice:
    """kohya's choice for a single fixed bucket: resize so the image covers it (matching the relatively shorter
    side), then crop."""
    width, height = size
    scale = bucket[1] / height if width / height > bucket[0] / bucket[1] else bucket[0] / width
    resized = (int(width * scale + 0.5), int(height * scale + 0.5))
    return BucketChoice(bucket, resized, bucket[0] / bucket[1] - width / height)


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


def _image_choice(path: Path, select: BucketSelector, native_crop: bool = False) -> BucketChoice:
    """The image's bucket and resize. native_crop (random_crop without buckets): an image at least as large as
    `resolution` is cut at its own scale, as kohya's uncached path does (kohya refuses other sizes there; they are
    resized to cover, as its latent cache does)."""
    size = upright_size(path)
    choice = select(size)
    if native_crop and size[0] >= choice.bucket[0] and size[1] >= choice.bucket[1]:
        return BucketChoice(choice.bucket, size, choice.ar_error)
    return choice


def _native_crop(config: TrainConfig, augment: Augment | TrainConfig) -> bool:
    return augment.random_crop and not config.enable_bucket


def _metadata_items(
    config: TrainConfig, root: Path, path: Path, repeats: int, augment: Augment | None = None
) -> list[TrainItem]:
    if not path.is_file():
        raise DatasetError(f"in_json not found: {path}. Run `sdtrain merge` (and `sdtrain buckets`) first.")
    metadata = load_metadata(path)  # a clear message for a file of the wrong shape, naming the entry
    aug = augment or config
    _check_metadata_buckets(config, path, metadata)
    images = {p.stem: p for p in list_images(root)}
    select = _bucket_selector(config)
    items = []
    for key, entry in metadata.items():
        image = _find_image(key, images)
        latents = _latents_path(key, image, root)
        if "train_resolution" in entry:
            width, height = (int(v) for v in entry["train_resolution"])
            bucket, resized = (width, height), None
        elif image is not None:
            choice = _image_choice(image, select, _native_crop(config, aug))
            bucket, resized = choice.bucket, choice.resized_size
        else:
            raise DatasetError(f"{key}: no image in {root} and no train_resolution in {path.name}")
        usable = latents.is_file() and _latents_usable(latents, aug)
        caption = _metadata_caption(entry, aug)
        items.append(
            TrainItem(key, caption, bucket, image, latents if usable else None, augment=augment, resized=resized)
        )
    if any(i.latents_path is None for i in items):  # as kohya: cached latents only if all exist (and fit)
        items = [dataclasses.replace(i, latents_path=None) for i in items]
        missing = [i.key for i in items if i.image_path is None]
        if missing:
            raise DatasetError(
                f"{len(missing)} images have neither a file nor usable cached latents, e.g. {missing[:3]}"
                + _unusable_latents_reason(aug)
            )
    else:
        items = [dataclasses.replace(i, bucket=_cached_bucket(i, config, select)) for i in items]
    return [item for item in items for _ in range(repeats)]


def _check_metadata_buckets(config: TrainConfig, path: Path, metadata: dict) -> None:
    """kohya trains a metadata file's train_resolution buckets whatever enable_bucket says (it turns buckets on):
    an explicit enable_bucket = false would be ignored, so it is refused."""
    if not config.enable_bucket and any("train_resolution" in entry for entry in metadata.values()):
        raise ConfigError(
            f"enable_bucket = false, but {path.name} gives each image a bucket (train_resolution, from `sdtrain "
            "buckets`), which kohya trains anyway. Remove enable_bucket = false, or train from meta_clean.json "
            "(no buckets) to crop every image to `resolution`."
        )


def _latents_usable(path: Path, augment: Augment | TrainConfig) -> bool:
    """kohya reads no .npz when the pixels change per step (random_crop, color_aug), and with flip_aug only when
    the flipped latents are cached too (in the .npz, or kohya v0.6's <name>_flip.npz)."""
    if any(getattr(augment, key) for key in PER_STEP_PIXELS):
        return False
    return not augment.flip_aug or _flipped_latents_cached(path)


def _unusable_latents_reason(augment: Augment | TrainConfig) -> str:
    if any(getattr(augment, key) for key in PER_STEP_PIXELS):
        return " (random_crop and color_aug need the images: cached latents are not used with them, as in kohya)"
    if augment.flip_aug:
        return " (flip_aug needs flipped latents: run `sdtrain buckets --flip_aug`, or keep the images)"
    return ""


def _flipped_latents_cached(path: Path) -> bool:
    if flip_npz_path_for(path).is_file():
        return True
    try:
        with np.load(path) as npz:
            return "latents_flipped" in npz.files
    except (OSError, ValueError, EOFError) as e:
        raise DatasetError(f"Cannot read cached latents {path}: {e}. Re-run Prepare (sdtrain buckets).") from e


def _metadata_caption(entry: dict, augment: Augment | TrainConfig) -> str:
    """The caption and the tags; with enable_wildcard the tags follow each line of a multi-line caption (kohya)."""
    caption, tags = entry.get("caption", "").strip(), entry.get("tags", "").strip()
    if augment.enable_wildcard and caption and tags:
        tags = tags.replace("\n", augment.caption_separator)
        return "\n".join(f"{line}{augment.caption_separator}{tags}" for line in caption.split("\n") if line.strip())
    return ", ".join(t for t in (caption, tags) if t)


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
            shape = npz[_latents_key(npz.files)].shape
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise DatasetError(f"Cannot read cached latents {path}: {e}. Re-run Prepare (sdtrain buckets).") from e
    if len(shape) != 3:
        raise DatasetError(f"Cached latents {path} have the shape {shape}, not (4, H/8, W/8). Re-run Prepare.")
    return shape[2] * 8, shape[1] * 8


def _cached_bucket(item: TrainItem, config: TrainConfig, select: BucketSelector) -> tuple[int, int]:
    """The item's bucket, checked against its latents: they must have the size of the image's bucket at this run's
    resolution (train_resolution when the image is gone). A stale cache would crash a batch (tensors of different
    sizes) or silently train at the old size. Refused rather than re-encoded, so a run never quietly takes the
    slow path or writes over the user's cache."""
    assert item.latents_path is not None
    cached = _cached_latents_size(item.latents_path)
    expected = _image_choice(item.image_path, select).bucket if item.image_path is not None else item.bucket
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
    select = _bucket_selector(config)
    train: list[tuple[TrainItem, int]] = []
    reg: list[tuple[TrainItem, int]] = []
    for subset in subsets:
        if subset.metadata_file is not None:
            root = subset.image_dir or subset.metadata_file.parent
            train += [(item, 1) for item in _metadata_items(config, root, subset.metadata_file, subset.num_repeats,
                                                            subset.augment)]  # fmt: skip
            continue
        images = _subset_images(config, subset, select)
        (reg if subset.is_reg else train).extend((item, subset.num_repeats) for item in images)
    items = [item for item, repeats in train for _ in range(repeats)]
    used = balance_reg_repeats(len(items), [repeats for _, repeats in reg])
    return items + [item for (item, _), repeats in zip(reg, used, strict=True) for _ in range(repeats)]


def _subset_images(config: TrainConfig, subset: Subset, select: BucketSelector) -> list[TrainItem]:
    """One item per image of an image folder: the caption file's first line (all its lines with enable_wildcard),
    else the class tokens."""
    folder = subset.image_dir
    assert folder is not None
    if subset.augment is not None:  # a dataset_config names its folders: a missing or empty one is a mistake
        if not folder.is_dir():
            raise DatasetError(f"dataset_config: image_dir not found: {folder}")
        if not list_images(folder):
            raise DatasetError(f"dataset_config: no images in image_dir {folder}")
    base = subset.key_base or folder.parent
    augment = subset.augment or config
    items = []
    for image in list_images(folder):
        caption_file = image.with_suffix(subset.caption_extension)
        if caption_file.is_file():
            caption = _caption_lines(caption_file, augment.enable_wildcard)
        else:
            caption = subset.class_tokens or ""
        choice = _image_choice(image, select, _native_crop(config, augment))
        key = str(image.relative_to(base))
        items.append(
            TrainItem(key, caption, choice.bucket, image, is_reg=subset.is_reg, augment=subset.augment,
                      resized=choice.resized_size)
        )  # fmt: skip
    return items


def _caption_lines(path: Path, all_lines: bool) -> str:
    """A caption file's first line; with enable_wildcard its non-empty lines, one of which each step picks (kohya)."""
    text, _ = read_caption_file(path)
    lines = [line.strip() for line in (text or "").splitlines()]
    if all_lines:
        return "\n".join(line for line in lines if line)
    return lines[0] if lines else ""


def epoch_batches(items: list[TrainItem], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of item indices for one epoch: shuffled, one bucket of one dataset per batch (each dataset's own
    batch size where a dataset_config sets it, else `batch_size`), deterministic in (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    groups: dict[tuple[int, tuple[int, int]], list[int]] = {}
    for index in torch.randperm(len(items), generator=generator).tolist():
        groups.setdefault((items[index].dataset, items[index].bucket), []).append(index)
    batches = []
    for _, indices in sorted(groups.items()):
        size = items[indices[0]].batch_size or batch_size
        batches += [indices[i : i + size] for i in range(0, len(indices), size)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


@dataclass(frozen=True)
class CaptionTime:
    """When a caption is drawn: kohya's current_epoch (from 1), current_step (optimizer steps done) and
    max_train_steps, which caption_dropout_every_n_epochs and token warmup read."""

    epoch: int
    step: int
    max_steps: int


def process_caption(
    caption: str, augment: TrainConfig | Augment, generator: torch.Generator, time: CaptionTime | None = None
) -> str:
    """kohya's BaseDataset.process_caption, step for step: prefix and suffix; whole-caption dropout (by rate, or
    every n-th epoch); a wildcard choice (else the first line); when shuffling, tag dropout or token warmup is on,
    the tags split at keep_tokens (or keep_tokens_separator), cut by the warmup, shuffled, dropped, and joined with
    ', '; last, secondary_separator becomes caption_separator."""
    if time is None and (augment.caption_dropout_every_n_epochs or augment.token_warmup_step):
        raise ValueError("caption_dropout_every_n_epochs and token warmup need the CaptionTime")
    if augment.caption_prefix:
        caption = f"{augment.caption_prefix} {caption}"
    if augment.caption_suffix:
        caption = f"{caption} {augment.caption_suffix}"
    if _drop_caption(augment, generator, time):
        return ""
    caption = _wildcards(caption, generator) if augment.enable_wildcard else caption.split("\n")[0]
    if augment.shuffle_caption or augment.token_warmup_step > 0 or augment.caption_tag_dropout_rate > 0:
        caption = _process_tags(caption, augment, generator, time)
    if augment.secondary_separator:
        caption = caption.replace(augment.secondary_separator, augment.caption_separator)
    return caption


def _drop_caption(augment: TrainConfig | Augment, generator: torch.Generator, time: CaptionTime | None) -> bool:
    rate = augment.caption_dropout_rate
    dropped = rate > 0 and torch.rand((), generator=generator).item() < rate
    every = augment.caption_dropout_every_n_epochs
    return dropped or (every > 0 and time is not None and time.epoch % every == 0)


def _process_tags(
    caption: str, augment: TrainConfig | Augment, generator: torch.Generator, time: CaptionTime | None
) -> str:
    fixed, flex, fixed_end = _split_tags(caption, augment)
    warmup = augment.token_warmup_step
    if warmup < 1:  # a fraction of the run (0: off)
        warmup = math.floor(warmup * (time.max_steps if time else 0))
    if warmup and time is not None and time.step < warmup:
        count = math.floor(time.step * ((len(flex) - augment.token_warmup_min) / warmup)) + augment.token_warmup_min
        flex = flex[:count]
    if augment.shuffle_caption:
        flex = [flex[i] for i in torch.randperm(len(flex), generator=generator).tolist()]
    rate = augment.caption_tag_dropout_rate
    if rate > 0:
        flex = [tag for tag in flex if torch.rand((), generator=generator).item() >= rate]
    return ", ".join(fixed + flex + fixed_end)


def _split_tags(caption: str, augment: TrainConfig | Augment) -> tuple[list[str], list[str], list[str]]:
    """(tags kept first, tags to shuffle/drop, tags kept last): at keep_tokens_separator where the caption has it
    (a second one starts the kept end), else the first keep_tokens tags are kept."""
    sep, marker = augment.caption_separator, augment.keep_tokens_separator
    if marker and marker in caption:
        fixed, flex = caption.split(marker, 1)
        flex, _, end = flex.partition(marker)
        return _tags(fixed, sep), _tags(flex, sep), _tags(end, sep)
    tokens = [t.strip() for t in caption.strip().split(sep)]  # kohya keeps empty tags here
    keep = augment.keep_tokens
    return (tokens[:keep], tokens[keep:], []) if keep > 0 else ([], tokens, [])


def _tags(text: str, sep: str) -> list[str]:
    return [t.strip() for t in text.split(sep) if t.strip()]


_WILDCARD = re.compile(r"\{([^}]+)\}")


def _wildcards(caption: str, generator: torch.Generator) -> str:
    """kohya's enable_wildcard: one line of a multi-line caption at random, then each {a|b|c} replaced by one of its
    choices; {{ and }} stand for plain braces."""
    if "\n" in caption:
        lines = caption.split("\n")
        caption = lines[_randint(len(lines), generator)]
    open_mark, close_mark = "\ue000", "\ue001"  # placeholders for escaped braces, made unique in this caption
    while open_mark in caption or close_mark in caption:
        open_mark, close_mark = open_mark + "\ue000", close_mark + "\ue001"
    caption = caption.replace("{{", open_mark).replace("}}", close_mark)

    def choose(match: re.Match) -> str:
        choices = match.group(1).split("|")
        return choices[_randint(len(choices), generator)]

    caption = _WILDCARD.sub(choose, caption)
    return caption.replace(open_mark, "{").replace(close_mark, "}")


def _randint(n: int, generator: torch.Generator) -> int:
    return int(torch.randint(n, (), generator=generator).item())


def caption_varies(item: TrainItem, config: TrainConfig) -> bool:
    """Whether the item's processed caption can differ between steps (then text-encoder outputs cannot be cached)."""
    a = item.augment or config
    wildcard = a.enable_wildcard and ("\n" in item.caption or "{" in item.caption)
    return bool(
        a.shuffle_caption or a.caption_dropout_rate or a.caption_tag_dropout_rate or a.caption_dropout_every_n_epochs
        or a.token_warmup_step or wildcard
    )  # fmt: skip


def fixed_caption(item: TrainItem, config: TrainConfig) -> str:
    """The caption an item trains with at every step, when caption_varies is false (prefix, suffix, first line and
    secondary_separator applied)."""
    return process_caption(item.caption, item.augment or config, torch.Generator(), CaptionTime(1, 0, 0))


def load_pixels(item: TrainItem, generator: torch.Generator | None = None) -> torch.Tensor:
    """The item's image resized and cropped to its bucket, as a [3, H, W] tensor in [-1, 1]: cropped at the centre,
    or (random_crop) at a place drawn from `generator`, which also draws color_aug; without a generator neither
    random_crop nor color_aug applies (for caching, which they exclude)."""
    assert item.image_path is not None
    try:
        image = load_image_rgb(item.image_path)
    except ImageLoadError as e:
        raise DatasetError(f"Cannot use training image {e.path}: {e.reason}") from e
    augment = item.augment or Augment()  # collect_items gives every item its settings
    resized = item.resized or _cover_choice(image.size, item.bucket).resized_size
    if generator is not None and augment.random_crop:
        image = resize_and_crop(image, BucketChoice(resized, resized, 0.0))  # resize only
        left = _randint(image.width - item.bucket[0] + 1, generator)
        top = _randint(image.height - item.bucket[1] + 1, generator)
        image = image.crop((left, top, left + item.bucket[0], top + item.bucket[1]))
    else:
        image = resize_and_crop(image, BucketChoice(item.bucket, resized, 0.0))
    array = np.asarray(image)
    if generator is not None and augment.color_aug:
        array = color_aug(array, generator)
    tensor = torch.from_numpy(array.astype(np.float32) / 127.5 - 1.0)
    return tensor.permute(2, 0, 1)


HUE_SHIFT_LIMIT = 8  # kohya's, in OpenCV hue units (2 degrees each)


def color_aug(array: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """kohya's AugHelper.color_aug on an RGB uint8 array: with a chance of 0.33, either (half the time) a hue shift
    of up to +-8 OpenCV units (16 degrees) or kohya's gamma, pixel ** g with g in [0.95, 1.05] on the 0-255 values,
    clipped."""
    from PIL import Image

    if _uniform(0.0, 1.0, generator) > 0.33:
        return array
    if _uniform(0.0, 1.0, generator) > 0.5:
        shift = _uniform(-HUE_SHIFT_LIMIT, HUE_SHIFT_LIMIT, generator) * 256 / 180  # PIL's hue runs 0-255
        hsv = np.array(Image.fromarray(array).convert("HSV"))
        hsv[..., 0] = ((hsv[..., 0].astype(np.float32) + shift) % 256).astype(np.uint8)
        return np.array(Image.fromarray(hsv, "HSV").convert("RGB"))
    gamma = _uniform(0.95, 1.05, generator)
    return np.clip(array.astype(np.float64) ** gamma, 0, 255).astype(np.uint8)


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()


def load_cached_latents(item: TrainItem, flip: bool) -> torch.Tensor:
    """Unscaled latents from kohya's .npz (`latents`, or `arr_0` from v0.6); flipped: its `latents_flipped`, or
    kohya v0.6's <name>_flip.npz beside it. collect_items keeps no cache without flipped latents under flip_aug
    (flipping latents is not flipping the image)."""
    assert item.latents_path is not None
    path = item.latents_path
    with np.load(path) as npz:
        if flip and "latents_flipped" in npz.files:
            return torch.from_numpy(npz["latents_flipped"].astype(np.float32))
        if not flip:
            return torch.from_numpy(npz[_latents_key(npz.files)].astype(np.float32))
    if not flip_npz_path_for(path).is_file():
        raise DatasetError(f"{path} has no flipped latents (latents_flipped or {flip_npz_path_for(path).name}).")
    with np.load(flip_npz_path_for(path)) as npz:
        return torch.from_numpy(npz[_latents_key(npz.files)].astype(np.float32))


def _latents_key(files: list[str]) -> str:
    return "latents" if "latents" in files else "arr_0"


SizeAndCrop = tuple[list[float], list[float]]
"""An item's original size [w, h] and crop_ltrb [l, t, r, b], as kohya's .npz stores them."""


def original_size_and_crop(item: TrainItem) -> SizeAndCrop:
    """From the item's .npz (kohya's `original_size`, `crop_ltrb`) when it has them, else from the image header,
    placed in the bucket as `buckets` places it. Reads a file: the loop asks once per image, before training."""
    if item.latents_path is not None:
        with np.load(item.latents_path) as npz:
            if {"original_size", "crop_ltrb"} <= set(npz.files):
                return npz["original_size"].tolist(), npz["crop_ltrb"].tolist()
    from lib_sdtrain.prepare.buckets import crop_ltrb

    assert item.image_path is not None, "an item without cached sizes has its image"
    width, height = upright_size(item.image_path)
    return [float(width), float(height)], list(crop_ltrb(item.bucket, (width, height)))


def size_conditioning(
    item: TrainItem, flipped: bool, sizes: SizeAndCrop | None = None
) -> tuple[int, int, int, int, int, int]:
    """SDXL's six size ids for an item, as kohya's dataset gives them to sdxl_train_network.py: the original size
    (height, width), where the crop starts (top, left; mirrored when flipped) and the target size (the bucket's
    height, width). `sizes`: original_size_and_crop(item), read here when not given."""
    original, crop = sizes or original_size_and_crop(item)
    width, height = item.bucket
    left = width - crop[2] if flipped else crop[0]
    return int(original[1]), int(original[0]), int(crop[1]), int(left), height, width
