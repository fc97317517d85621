"""Tagging images with a WD14 tagger (ONNX), with the options and output of kohya's tag_images_by_wd14_tagger.py.

A tagger is a folder with `model.onnx` and `selected_tags.csv` (header tag_id,name,category,count; category 9 =
rating, 0 = general, 4 = character), or a hub id such as SmilingWolf/wd-v1-4-moat-tagger-v2 (downloaded when the
hub is reachable). Images are prepared as the models expect: alpha on white, padded to a white square (centred),
resized to the model's input size, BGR, float32 0-255, NHWC.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lib_sdtrain.dataset.images import ImageJobSummary, dataset_images, image_batches, images_to_process
from lib_sdtrain.dataset.metadata import read_caption_file
from lib_sdtrain.errors import ModelLoadError, shorten
from lib_sdtrain.utils.files import atomic_write_text
from lib_sdtrain.utils.progress import Progress

DEFAULT_REPO = "SmilingWolf/wd-v1-4-convnext-tagger-v2"
RATING, GENERAL, CHARACTER = 9, 0, 4


@dataclass
class TagOptions:
    thresh: float = 0.35
    general_threshold: float | None = None
    character_threshold: float | None = None
    remove_underscore: bool = False
    undesired_tags: str = ""
    caption_extension: str = ".txt"
    caption_separator: str = ", "
    append_tags: bool = False
    overwrite: bool = False
    use_rating_tags: bool = False
    batch_size: int = 1
    recursive: bool = False
    debug: bool = False


@dataclass
class TagSummary(ImageJobSummary):
    provider: str = ""


@dataclass(frozen=True)
class Tagger:
    model_path: Path
    tags: list[tuple[str, int]]  # (name, category), in the model's output order


def find_tagger(model_dir: str | None = None, repo_id: str = DEFAULT_REPO) -> Tagger:
    """The tagger in `model_dir` (kohya's usage: the folder itself), else `repo_id` from the hub or its cache."""
    if model_dir and (Path(model_dir) / "model.onnx").is_file():
        folder = Path(model_dir)
        model, tags = folder / "model.onnx", folder / "selected_tags.csv"
    elif model_dir and Path(model_dir).exists():
        raise ModelLoadError(
            f"{model_dir} has no model.onnx: give the folder that holds model.onnx and selected_tags.csv."
        )
    else:
        model, tags = _download(repo_id, model_dir)
    if not tags.is_file():
        raise ModelLoadError(f"selected_tags.csv is missing beside {model}.")
    return Tagger(model, read_tag_list(tags))


def read_tag_list(path: Path) -> list[tuple[str, int]]:
    """(name, category) for each row of a WD14 selected_tags.csv; ModelLoadError naming the file, the row and what
    is wrong (not UTF-8, no name/category columns, a category that is not a number)."""
    expected = "a WD14 tag list (UTF-8, with the columns tag_id,name,category,count)"
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise ModelLoadError(f"{path} is not {expected}: {type(e).__name__} ({str(e)[:120]}).") from None
    if not rows or not {"name", "category"} <= set(rows[0]):
        found = ", ".join(str(c)[:40] for c in (rows[0] if rows else {})) or "no rows"
        raise ModelLoadError(f"{path} is not {expected}; found: {found}.")
    tags = []
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        try:
            tags.append((str(row["name"]), int(row["category"])))
        except (TypeError, ValueError):
            category = shorten(row["category"])
            raise ModelLoadError(f"{path}, line {number}: category {category} is not a number.") from None
    return tags


def _download(repo_id: str, cache_dir: str | None) -> tuple[Path, Path]:
    from huggingface_hub import hf_hub_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        files = [
            Path(hf_hub_download(repo_id, name, cache_dir=cache_dir, local_files_only=offline))
            for name in ("model.onnx", "selected_tags.csv")
        ]
    except Exception as e:  # hub errors come in many classes; all mean the same thing to the user
        raise ModelLoadError(
            f"Could not get the tagger {repo_id} ({type(e).__name__}). Download model.onnx and selected_tags.csv "
            "from it and give their folder with --model_dir."
        ) from e
    return files[0], files[1]


def make_session(tagger: Tagger):
    """An onnxruntime session on CUDA when this onnxruntime build can use it, else the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    try:
        return ort.InferenceSession(str(tagger.model_path), providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        raise ModelLoadError(f"{tagger.model_path} is not a usable ONNX model: {e}") from e


def prepare_image(image: Image.Image, size: int) -> np.ndarray:
    """RGB image (alpha already on white) -> [size, size, 3] float32 BGR 0-255, centred on a white square.

    kohya pads to a square first and then resizes; we resize first (the same picture up to the edge pixels), so
    a 20000x32 panorama never becomes a 20000x20000 canvas: memory stays at the model's input size.
    """
    side = max(image.size)
    if side != size:
        scaled = (max(1, round(image.width * size / side)), max(1, round(image.height * size / side)))
        # kohya: OpenCV INTER_AREA when shrinking, LANCZOS when enlarging; Pillow's BOX is the area average.
        image = image.resize(scaled, Image.Resampling.BOX if side > size else Image.Resampling.LANCZOS)
    square = Image.new("RGB", (size, size), (255, 255, 255))
    square.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return np.asarray(square, dtype=np.float32)[:, :, ::-1].copy()


def select_tags(probs: np.ndarray, tagger: Tagger, options: TagOptions) -> list[str]:
    general = options.general_threshold if options.general_threshold is not None else options.thresh
    character = options.character_threshold if options.character_threshold is not None else options.thresh
    undesired = {t.strip() for t in options.undesired_tags.split(",") if t.strip()}
    chosen, ratings = [], []
    for (name, category), p in zip(tagger.tags, probs, strict=True):
        if category == RATING:
            ratings.append((p, name))
            continue
        if (category == GENERAL and p >= general) or (category == CHARACTER and p >= character):
            chosen.append(name)
    if options.use_rating_tags and ratings:
        chosen.insert(0, max(ratings)[1])  # the most likely rating first, as kohya
    if options.remove_underscore:
        chosen = [t.replace("_", " ") if len(t) > 3 else t for t in chosen]  # keeps faces like ^_^
    return [t for t in chosen if t not in undesired]


def tag_images(folder: str | Path, tagger: Tagger, options: TagOptions, progress: Progress | None = None) -> TagSummary:
    progress = progress or Progress()
    listing = dataset_images(folder, options.recursive, progress, writable=True)
    session = make_session(tagger)
    summary = TagSummary(provider=session.get_providers()[0])
    progress.message(f"Tagging {len(listing.images)} images with {tagger.model_path.name} on {summary.provider}.")
    model_input = session.get_inputs()[0]
    size = int(model_input.shape[1]) if isinstance(model_input.shape[1], int) else 448
    keep_existing = not (options.overwrite or options.append_tags)
    todo = images_to_process(listing, options.caption_extension, keep_existing, summary)
    progress.start(len(todo), "tagging")
    for _, batch, pictures in image_batches(todo, options.batch_size, summary, progress):
        arrays = np.stack([prepare_image(picture, size) for picture in pictures])
        probs = session.run(None, {model_input.name: arrays})[0]
        if probs.shape[-1] != len(tagger.tags):  # a tag list of another model, or cut short
            raise ModelLoadError(
                f"{tagger.model_path.parent / 'selected_tags.csv'} lists {len(tagger.tags)} tags, but "
                f"{tagger.model_path.name} gives {probs.shape[-1]} scores: use the tag list that came with the model."
            )
        for path, row in zip(batch, probs, strict=True):
            _write_tags(path, select_tags(row, tagger, options), options, progress)
            summary.written += 1
    progress.finish()
    return summary


def _write_tags(path: Path, tags: list[str], options: TagOptions, progress: Progress) -> None:
    target = path.with_suffix(options.caption_extension)
    if options.append_tags and target.exists():
        text, warning = read_caption_file(target)
        if warning:
            progress.message(warning)
        existing = [t.strip() for t in text.split(options.caption_separator.strip()) if t.strip()]
        tags = existing + [t for t in tags if t not in existing]
    text = options.caption_separator.join(tags)
    atomic_write_text(target, text + "\n")
    if options.debug:
        progress.message(f"{path}: {text}")
