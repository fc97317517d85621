"""`make_demo`: tiny models and a small drawn dataset, so that a new user can run caption -> tag -> prepare ->
train -> generate on a CPU in minutes, before downloading anything."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lib_sdtrain.utils.files import atomic_write_text, make_folder_beside
from lib_sdtrain.utils.progress import Progress

SEED = 0
DEMO_IMAGES = 12
README = """\
SD-Train demo models
====================

These are tiny models with RANDOM weights, made by SD-Train from configs in a second:

  sd-tiny/    a Stable Diffusion 1.x-shaped model (diffusers folder), about 1/500 of the real size
  sdxl-tiny/  an SDXL-shaped model (diffusers folder: two text encoders, size conditioning), as small
  blip-tiny/  a BLIP captioner that strings together short captions about a red creature
  wd14-tiny/  a WD14-style tagger (model.onnx + selected_tags.csv) that tags the demo images by their colours

They exist only so that you can try the whole workflow (caption, tag, prepare, train, generate) on a CPU in a
few minutes. Their images are not pictures: expect coloured noise, before and after training.

For real work, put a Stable Diffusion 1.5 checkpoint (.safetensors) into the checkpoints folder and use it as
the model; captioning and tagging then use the real BLIP and WD14 models from the Hugging Face hub.
You can delete this folder at any time; `sdtrain demo` makes it again.
"""


@dataclass
class DemoPaths:
    sd_model: Path
    sdxl_model: Path
    blip: Path
    tagger: Path
    dataset: Path
    made: list[str] = field(default_factory=list)
    """What this call wrote (names of the fields above); empty when everything was there already."""


_lock = threading.Lock()  # two clicks on "Make demo" must not build the same folder twice at once


def demo_paths(models_dir: str | os.PathLike[str], dataset_dir: str | os.PathLike[str]) -> DemoPaths:
    demo = Path(models_dir) / "demo"
    return DemoPaths(
        demo / "sd-tiny", demo / "sdxl-tiny", demo / "blip-tiny", demo / "wd14-tiny", Path(dataset_dir) / "demo"
    )


def make_demo(
    models_dir: str | os.PathLike[str],
    dataset_dir: str | os.PathLike[str],
    force: bool = False,
    progress: Progress | None = None,
) -> DemoPaths:
    """Write the demo models under models_dir/demo and the images to dataset_dir/demo. What exists is kept unless
    `force`; each folder appears complete or not at all (built beside its place, then renamed into it)."""
    from lib_sdtrain.demo.dataset import draw_demo_dataset
    from lib_sdtrain.demo.onnx_writer import write_tiny_tagger
    from lib_sdtrain.demo.tiny_blip import write_tiny_blip

    paths = demo_paths(models_dir, dataset_dir)
    progress = progress or Progress()
    steps: list[tuple[str, Callable[[Path], object]]] = [
        ("sd_model", _write_sd_model),
        ("sdxl_model", _write_sdxl_model),
        ("blip", lambda folder: write_tiny_blip(folder, seed=SEED)),
        ("tagger", write_tiny_tagger),
        ("dataset", lambda folder: draw_demo_dataset(folder, DEMO_IMAGES, seed=SEED)),
    ]
    with _lock:
        progress.start(len(steps), "making the demo")
        readme = paths.sd_model.parent / "README.txt"
        if force or not readme.is_file():
            atomic_write_text(readme, README)
        for name, build in steps:
            progress.check_cancelled()
            target = getattr(paths, name)
            if _build_folder(target, build, force):
                paths.made.append(name)
                progress.message(f"wrote {target}")
            else:
                progress.message(f"kept {target} (already there)")
            progress.advance()
        progress.finish()
    return paths


def _write_sd_model(folder: Path) -> None:
    from lib_sdtrain.demo.tiny_models import write_tiny_diffusers_model

    write_tiny_diffusers_model(folder, seed=SEED, words=demo_words())


def _write_sdxl_model(folder: Path) -> None:
    from lib_sdtrain.demo.tiny_models import write_tiny_sdxl_diffusers_model

    write_tiny_sdxl_diffusers_model(folder, seed=SEED, words=demo_words())


def demo_words() -> list[str]:
    """The tiny tokenizer's whole words: the demo's caption and tag words too, so that prompts about the creature
    become word tokens, as they would with a real CLIP vocabulary."""
    from lib_sdtrain.demo.onnx_writer import DEMO_TAGS
    from lib_sdtrain.demo.tiny_blip import WORDS as CAPTION_WORDS
    from lib_sdtrain.demo.tiny_models import WORDS

    tag_words = [part for name, *_ in DEMO_TAGS for part in name.split("_")]
    return list(dict.fromkeys([*WORDS, *CAPTION_WORDS, *tag_words]))


def _build_folder(target: Path, build: Callable[[Path], object], force: bool) -> bool:
    """Build into a hidden folder beside `target`, then rename it into place; False when `target` was kept."""
    if target.exists() and not force:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(target)
    staging = make_folder_beside(target, "partial")
    try:
        build(staging)
        if target.exists():  # force: move the old one aside first, so the name is never empty for long
            old = make_folder_beside(target, "old")
            os.replace(target, old / target.name)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return True


def _remove_leftovers(target: Path) -> None:
    """Folders of an earlier run that was killed half-way (never renamed into place)."""
    for pattern in (f".{target.name}.partial-*", f".{target.name}.old-*"):
        for leftover in target.parent.glob(pattern):
            with contextlib.suppress(OSError):
                shutil.rmtree(leftover)
