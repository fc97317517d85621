"""The VAE latent cache: kohya's prepare_buckets_latents.py, re-implemented.

Writes `meta_lat.json` (the input metadata plus `"train_resolution": [W, H]` per image) and one `<stem>.npz` per
image beside it with kohya's current keys (v0.7-v0.9): `latents` (4, H/8, W/8) float32, `original_size` [W, H],
`crop_ltrb` [l, t, r, b] and, with flip augmentation, `latents_flipped`.
kohya v0.6.x reads `np.load(path)["arr_0"]` and the flipped latents from a separate `<stem>_flip.npz`: only with
`--npz_legacy_arr0` (LatentCacheOptions.legacy_arr0) are they written too, since the copy doubles every file (64 KiB
more at 512x512). A `<stem>_flip.npz` that is not written is removed, as v0.6.6 does, because v0.6 training would
otherwise pick up flipped latents of an older bucket. The cache check (--skip_existing) accepts files with or
without arr_0 unless the legacy copy is asked for.
Latents are stored UNSCALED (the trainer multiplies by the VAE's scaling factor, 0.18215 for SD).
One deliberate difference: images are opened upright (EXIF orientation applied, dataset.images); kohya opens the
stored pixels, so for a rotated phone photo kohya picks the sideways bucket and trains on a sideways picture.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lib_sdtrain.dataset.images import MAX_IMAGE_PIXELS, ImageListing, dataset_images
from lib_sdtrain.dataset.metadata import Metadata, check_key_style, check_recursive_keys, image_key, load_metadata
from lib_sdtrain.errors import Cancelled, DatasetError, OutputError
from lib_sdtrain.prepare.buckets import BucketAssigner, BucketSettings, Size, crop_ltrb
from lib_sdtrain.prepare.scan import ImageRecord, inspect_image, prefetch
from lib_sdtrain.utils.files import atomic_path, atomic_write_json, check_writable
from lib_sdtrain.utils.progress import Progress


@dataclass
class LatentCacheOptions:
    buckets: BucketSettings = field(default_factory=BucketSettings)
    batch_size: int = 1
    workers: int = 0  # image-loading threads (--max_data_loader_n_workers)
    full_path: bool = False
    recursive: bool = False
    flip_aug: bool = False
    skip_existing: bool = False
    seed: int = 0  # latents are samples of the VAE posterior; this makes them reproducible
    legacy_arr0: bool = False  # also write kohya v0.6.x's arr_0 copy and <stem>_flip.npz (--npz_legacy_arr0)
    max_pixels: int = MAX_IMAGE_PIXELS


@dataclass
class LatentCacheResult:
    records: list[ImageRecord]
    metadata: Metadata
    encoded: int = 0
    skipped_existing: int = 0
    added_keys: list[str] = field(default_factory=list)  # images that had no entry in the input metadata


@dataclass
class _Pending:
    record: ImageRecord
    image: Image.Image


# --- the .npz files --------------------------------------------------------------------------------------------------


def npz_path_for(image_path: Path) -> Path:
    # kohya: <train_data_dir>/<stem>.npz, or beside the image in its sub-folder with --recursive --full_path.
    return image_path.with_suffix(".npz")


def flip_npz_path_for(image_path: Path) -> Path:
    return image_path.with_name(image_path.stem + "_flip.npz")


def latents_shape_ok(array: np.ndarray, bucket: Size) -> bool:
    return array.ndim == 3 and array.shape[1:] == (bucket[1] // 8, bucket[0] // 8)


NPZ_KEYS = frozenset({"latents", "original_size", "crop_ltrb"})  # kohya v0.7-v0.9, plus latents_flipped


def cached_latents_match(image_path: Path, bucket: Size, flip_aug: bool, legacy_arr0: bool = False) -> bool:
    """True when this image's .npz files exist, are complete and have the latent shape of `bucket` (with
    `legacy_arr0`, also the v0.6 arr_0 copy and `_flip.npz`; without it, files with or without them are fine)."""
    try:
        with np.load(npz_path_for(image_path)) as npz:
            if not NPZ_KEYS | ({"arr_0"} if legacy_arr0 else set()) <= set(npz.files):
                return False
            if not latents_shape_ok(npz["latents"], bucket):
                return False
            if flip_aug and (
                "latents_flipped" not in npz.files or not latents_shape_ok(npz["latents_flipped"], bucket)
            ):
                return False
        if flip_aug and legacy_arr0:
            with np.load(flip_npz_path_for(image_path)) as flipped:
                return latents_shape_ok(flipped["arr_0"], bucket)
        return True
    except (OSError, ValueError, KeyError, EOFError, zlib.error):
        return False  # missing or damaged: encode again


def save_latents_npz(
    image_path: Path,
    latents: np.ndarray,
    original_size: Size,
    crop: tuple[float, float, float, float],
    flipped: np.ndarray | None,
    legacy_arr0: bool = False,
) -> None:
    arrays = {"latents": latents, "original_size": np.array(original_size), "crop_ltrb": np.array(crop)}
    if flipped is not None:
        arrays["latents_flipped"] = flipped
    if legacy_arr0:
        arrays["arr_0"] = latents  # kohya v0.6.x reads this name
    _write_npz(npz_path_for(image_path), arrays)
    flip_path = flip_npz_path_for(image_path)
    if flipped is not None and legacy_arr0:
        _write_npz(flip_path, {"arr_0": flipped})
    else:
        flip_path.unlink(missing_ok=True)


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # np.savez on a file object: given a name it would append ".npz" to our temporary file's name.
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


# --- encoding --------------------------------------------------------------------------------------------------------


def image_noise_seed(key: str, seed: int) -> int:
    """Each image draws its posterior sample from its own generator, so a latent does not depend on the batch size,
    on the order of the images, or on which images --skip_existing skipped."""
    return ((seed & 0xFFFFFFFF) << 32) | zlib.crc32(key.encode("utf-8"))


def pixels_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """RGB uint8 images -> (B, 3, H, W) float32 in [-1, 1] (kohya: ToTensor then Normalize(0.5, 0.5))."""
    arrays = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    return (torch.from_numpy(arrays).permute(0, 3, 1, 2) / 255.0 - 0.5) / 0.5


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One sample per image of the VAE posterior, as float32 on the CPU.

    kohya caches `latent_dist.sample()`, not `.mode()`; we match it. The noise comes from per-image CPU generators
    (mean + std * N(0, 1), what `sample()` computes), so results are the same on any device.
    """
    dist = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
    noise = torch.stack([torch.randn(dist.mean.shape[1:], generator=g, dtype=torch.float32) for g in generators])
    latents = dist.mean + dist.std * noise.to(device=dist.mean.device, dtype=dist.mean.dtype)
    return latents.float().cpu()


def _encode_and_save(vae, batch: list[_Pending], options: LatentCacheOptions) -> None:
    generators = [torch.Generator().manual_seed(image_noise_seed(p.record.key, options.seed)) for p in batch]
    pixels = pixels_to_tensor([p.image for p in batch])
    latents = encode_latents(vae, pixels, generators)
    # The flipped sample continues each image's generator, so it is reproducible too.
    flipped = encode_latents(vae, torch.flip(pixels, dims=[3]), generators) if options.flip_aug else None
    for i, pending in enumerate(batch):
        if not torch.isfinite(latents[i]).all() or (flipped is not None and not torch.isfinite(flipped[i]).all()):
            raise DatasetError(
                f"The VAE returned NaN/inf latents for {pending.record.path}. With --mixed_precision fp16 the SD VAE "
                "overflows: use --mixed_precision no (or bf16). Nothing was written for this image."
            )
    for i, pending in enumerate(batch):
        record = pending.record
        assert record.choice is not None and record.size is not None
        save_latents_npz(
            record.path,
            latents[i].numpy(),
            record.size,
            crop_ltrb(record.choice.bucket, record.size),
            flipped[i].numpy() if flipped is not None else None,
            options.legacy_arr0,
        )


# --- the whole job ---------------------------------------------------------------------------------------------------


def cache_latents(
    train_dir: str | Path,
    in_json: str | Path,
    out_json: str | Path,
    vae,
    options: LatentCacheOptions,
    progress: Progress | None = None,
) -> LatentCacheResult:
    """Assign buckets, encode and save latents for every image in `train_dir`, then write `out_json` atomically.

    Unreadable images are reported (record.error) and left out of `out_json`; a failure or cancel part-way leaves
    an existing `out_json` untouched and keeps the .npz files finished so far (re-run with skip_existing).
    """
    progress = progress or Progress()
    listing = check_latent_inputs(train_dir, in_json, out_json, options, progress)
    metadata = {key: dict(entry) for key, entry in load_metadata(in_json).items()}
    assigner = BucketAssigner(options.buckets)
    result = LatentCacheResult(records=[], metadata=metadata)
    clashes = listing.name_clashes()

    pending: dict[Size, list[_Pending]] = {}
    progress.start(len(listing.images), "caching latents")
    try:
        for record, image in _load_all(listing.images, clashes, assigner, options):
            progress.check_cancelled()
            result.records.append(record)
            if record.error is None:
                batch = _place(record, image, metadata, result, pending, options)
                if batch is not None and len(batch) >= options.batch_size:
                    _encode_and_save(vae, batch, options)
                    result.encoded += len(batch)
                    batch.clear()
            elif record.path not in clashes:  # those were told with the listing
                progress.message(f"skipped {record.path}: {record.error}")
            progress.advance(1)
        for batch in pending.values():
            if batch:
                progress.check_cancelled()
                _encode_and_save(vae, batch, options)
                result.encoded += len(batch)
    except Cancelled as e:
        raise Cancelled(
            f"Cancelled: {result.encoded} latent files were written and kept; {out_json} was not changed. "
            "Run again with --skip_existing to continue."
        ) from e
    except OSError as e:  # a full disk: each .npz is written atomically, so none is left half-written
        folder = Path(e.filename).parent if e.filename else Path(train_dir)
        raise OutputError(
            f"Could not write the latents in {folder} ({e.strerror or e}): {result.encoded} latent files were "
            f"written and kept; {out_json} was not changed. Free some space, then run again with --skip_existing."
        ) from None
    finally:
        progress.finish()

    # Unreadable images are left out, so trainers never meet an entry without train_resolution or a broken file.
    used_keys = {r.key for r in result.records if r.error is None}
    for record in result.records:
        if record.error is not None and record.key not in used_keys:
            metadata.pop(record.key, None)
    try:
        atomic_write_json(out_json, metadata, indent=2)
    except OSError as e:
        raise OutputError(
            f"Could not write {Path(out_json).name} in {Path(out_json).parent} ({e.strerror or e}); the latent files "
            "are written and kept. Free some space, then run again with --skip_existing."
        ) from None
    return result


def check_latent_inputs(
    train_dir: str | Path,
    in_json: str | Path,
    out_json: str | Path,
    options: LatentCacheOptions,
    progress: Progress | None = None,
) -> ImageListing:
    """Everything `buckets` can check before the VAE is loaded: options, images, metadata, writable folders."""
    check_recursive_keys(options.recursive, options.full_path)
    if options.batch_size < 1:
        raise DatasetError("--batch_size must be at least 1.")
    listing = dataset_images(train_dir, options.recursive, progress, writable=True)
    if not Path(in_json).is_file():
        raise DatasetError(f"Metadata file not found: {in_json}. Run `merge` first to write it.")
    check_key_style(load_metadata(in_json), in_json, options.full_path)
    check_writable(Path(out_json).parent, f"{Path(out_json).name} and the dataset report are written there")
    return listing


def _load_all(
    images: list[Path], clashes: dict[Path, str], assigner: BucketAssigner, options: LatentCacheOptions
) -> Iterator[tuple[ImageRecord, Image.Image | None]]:
    """Each image opened and bucketed; a name clash (a.png after a.jpg: same key "a", same a.npz) is left out."""

    def load(path: Path) -> tuple[ImageRecord, Image.Image | None]:
        key = image_key(path, options.full_path)
        if path in clashes:
            return ImageRecord(path, key, error=clashes[path]), None
        return inspect_image(path, key, assigner, max_pixels=options.max_pixels, crop=True)

    yield from prefetch(images, load, options.workers)


def _place(
    record: ImageRecord,
    image: Image.Image | None,
    metadata: Metadata,
    result: LatentCacheResult,
    pending: dict[Size, list[_Pending]],
    options: LatentCacheOptions,
) -> list[_Pending] | None:
    """Record the image's train_resolution; queue it for encoding unless its cache is already right."""
    assert record.choice is not None and image is not None
    if record.key not in metadata:
        result.added_keys.append(record.key)  # kohya's rule: an entry with train_resolution only
    metadata.setdefault(record.key, {})["train_resolution"] = list(record.choice.train_resolution)
    if options.skip_existing and cached_latents_match(
        record.path, record.choice.bucket, options.flip_aug, options.legacy_arr0
    ):
        result.skipped_existing += 1
        return None
    batch = pending.setdefault(record.choice.bucket, [])
    batch.append(_Pending(record, image))
    return batch
