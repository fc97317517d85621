"""Latents of image-folder datasets, encoded once before training instead of at every step (kohya's cache_latents,
and cache_latents_to_disk's .npz beside each image).

Encoding is most of a step's cost for small LoRA runs, and the VAE then leaves the GPU. Each image's posterior sample
comes from its own generator (prepare.latents.image_noise_seed), so a cache is the same whatever the batch size or
order, and the same as `sdtrain buckets` writes for the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lib_sdtrain.errors import DatasetError
from lib_sdtrain.prepare.buckets import crop_ltrb
from lib_sdtrain.prepare.latents import (
    cached_latents_match,
    encode_latents,
    image_noise_seed,
    npz_path_for,
    save_latents_npz,
)
from lib_sdtrain.train import data
from lib_sdtrain.train.config import TrainConfig
from lib_sdtrain.utils.progress import Progress


@dataclass
class LatentCache:
    """Unscaled latents (CPU, float32) by (image, bucket); flipped ones where some item flips that image."""

    latents: dict[tuple[Path, tuple[int, int]], torch.Tensor] = field(default_factory=dict)
    flipped: dict[tuple[Path, tuple[int, int]], torch.Tensor] = field(default_factory=dict)
    encoded: int = 0
    read_from_disk: int = 0

    def covers(self, item: data.TrainItem) -> bool:
        return item.image_path is not None and (item.image_path, item.bucket) in self.latents

    def get(self, item: data.TrainItem, flip: bool) -> torch.Tensor:
        assert item.image_path is not None, "only an item read from an image file has cached latents"
        key = (item.image_path, item.bucket)
        return self.flipped[key] if flip else self.latents[key]

    def describe(self) -> str:
        parts = [f"{self.encoded} encoded"] + ([f"{self.read_from_disk} read from .npz"] if self.read_from_disk else [])
        return ", ".join(parts)


def _augment(item: data.TrainItem, config: TrainConfig):
    return item.augment or config


def folder_items(items: list[data.TrainItem]) -> list[data.TrainItem]:
    """The items whose latents no .npz from Prepare provides: image-folder items."""
    return [item for item in items if item.latents_path is None and item.image_path is not None]


def why_not_cached(items: list[data.TrainItem], config: TrainConfig) -> str | None:
    """None when the image-folder items' latents will be cached; else the reason, as the summary shows it."""
    if not folder_items(items):
        return None
    if not config.cache_latents:
        return "cache_latents is off"
    for option in data.PER_STEP_PIXELS:
        if any(getattr(_augment(item, config), option) for item in folder_items(items)):
            return f"{option} changes the pixels at every step"
    return None


def will_cache(items: list[data.TrainItem], config: TrainConfig) -> bool:
    """Whether build_latent_cache has image-folder latents to encode (or read) before training."""
    return bool(folder_items(items)) and why_not_cached(items, config) is None


def latent_source(items: list[data.TrainItem], config: TrainConfig) -> str:
    """Where a run's latents come from, for the start-of-training summary and the Check button's plan."""
    folders = folder_items(items)
    if not folders:
        return "cached latents (.npz from Prepare)"
    reason = why_not_cached(items, config)
    if reason:
        return f"images encoded by the VAE at each step ({reason})"
    to_disk = " and written as .npz beside the images" if config.cache_latents_to_disk else ""
    return f"latents encoded once before training{to_disk}"


@torch.no_grad()
def build_latent_cache(items: list[data.TrainItem], vae, config: TrainConfig, progress: Progress) -> LatentCache:
    """Encode each image-folder image once (both ways round where flip_aug asks), vae_batch_size images a call, one
    bucket per call; with cache_latents_to_disk, read a matching .npz instead and write the new ones."""
    cache = LatentCache()
    if not will_cache(items, config):
        return cache
    wanted: dict[tuple[Path, tuple[int, int]], data.TrainItem] = {}
    flip: set[tuple[Path, tuple[int, int]]] = set()
    for item in folder_items(items):
        assert item.image_path is not None  # image-folder items always have one
        key = (item.image_path, item.bucket)
        wanted.setdefault(key, item)
        if _augment(item, config).flip_aug:
            flip.add(key)
    todo = [key for key in wanted if not (config.cache_latents_to_disk and _read_npz(cache, key, key in flip))]
    if not todo:
        return cache
    progress.start(len(todo), "caching latents")
    by_bucket: dict[tuple[int, int], list] = {}
    for key in todo:
        by_bucket.setdefault(key[1], []).append(key)
    for keys in by_bucket.values():
        for start in range(0, len(keys), config.vae_batch_size):
            chunk = keys[start : start + config.vae_batch_size]
            _encode(cache, vae, [wanted[k] for k in chunk], chunk, flip, config)
            progress.advance(len(chunk))
            progress.check_cancelled()
    progress.finish()
    return cache


def _read_npz(cache: LatentCache, key: tuple[Path, tuple[int, int]], flip: bool) -> bool:
    image, bucket = key
    if not cached_latents_match(image, bucket, flip):
        return False
    with np.load(npz_path_for(image)) as npz:
        cache.latents[key] = torch.from_numpy(npz["latents"].astype(np.float32))
        if flip:
            cache.flipped[key] = torch.from_numpy(npz["latents_flipped"].astype(np.float32))
    cache.read_from_disk += 1
    return True


def _encode(cache: LatentCache, vae, batch: list[data.TrainItem], keys: list, flip: set, config: TrainConfig) -> None:
    pixels = torch.stack([data.load_pixels(item) for item in batch])
    generators = [torch.Generator().manual_seed(image_noise_seed(item.key, config.seed)) for item in batch]
    latents = encode_latents(vae, pixels, generators)
    # The flipped sample continues each image's generator, as `sdtrain buckets` draws it.
    flipped = encode_latents(vae, torch.flip(pixels, dims=[3]), generators) if any(k in flip for k in keys) else None
    for i, (item, key) in enumerate(zip(batch, keys, strict=True)):
        if not torch.isfinite(latents[i]).all() or (flipped is not None and not torch.isfinite(flipped[i]).all()):
            raise DatasetError(
                f"The VAE returned NaN/inf latents for {item.image_path}. A half-precision SD VAE can overflow: set "
                "no_half_vae = true, or use mixed_precision no."
            )
        cache.latents[key] = latents[i]
        if flipped is not None and key in flip:
            cache.flipped[key] = flipped[i]
        if config.cache_latents_to_disk:
            assert item.image_path is not None
            size = data.upright_size(item.image_path)
            save_latents_npz(
                item.image_path,
                latents[i].numpy(),
                size,
                crop_ltrb(item.bucket, size),
                cache.flipped[key].numpy() if key in cache.flipped else None,
            )
    cache.encoded += len(batch)
