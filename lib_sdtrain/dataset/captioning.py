"""Captioning with BLIP (transformers' BlipForConditionalGeneration), with kohya's make_captions.py options.

The model is a transformers folder or a hub id (default Salesforce/blip-image-captioning-large). Generation follows
kohya: beam search with repetition penalty 1.0, or nucleus sampling (top_p 0.9) with repetition penalty 1.1;
captions are conditioned on the prompt "a picture of", which is then stripped, as kohya's BLIP does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from lib_sdtrain.dataset.images import ImageJobSummary, dataset_images, image_batches, images_to_process
from lib_sdtrain.errors import ModelLoadError
from lib_sdtrain.utils.files import atomic_write_text
from lib_sdtrain.utils.progress import Progress

PROMPT = "a picture of"
DEFAULT_BLIP = "Salesforce/blip-image-captioning-large"
MIN_CAPTION_SIDE = 8  # pixels


def _local_only(source: str) -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or Path(source).is_dir()


@dataclass
class CaptionOptions:
    caption_extension: str = ".caption"
    batch_size: int = 1
    beam_search: bool = False
    num_beams: int = 1
    top_p: float = 0.9
    min_length: int = 5
    max_length: int = 75
    seed: int = 42
    overwrite: bool = False
    recursive: bool = False
    debug: bool = False


@dataclass
class Blip:
    model: Any  # transformers' BlipForConditionalGeneration
    processor: Any  # and its BlipProcessor
    device: torch.device


def load_blip(source: str, device: str | None = None, processor_source: str = DEFAULT_BLIP) -> Blip:
    """BLIP from a transformers folder or hub id, or from Salesforce's original `.pth` (then the processor, i.e.
    the image settings and tokenizer, comes from `processor_source`)."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    original = source.endswith((".pth", ".pt"))
    processor_from = processor_source if original else source
    try:
        processor = BlipProcessor.from_pretrained(processor_from, local_files_only=_local_only(processor_from))
        if original:
            from lib_sdtrain.dataset.blip_original import load_original_blip

            tokenizer = processor.tokenizer
            ids = {"bos_token_id": tokenizer.bos_token_id, "sep_token_id": tokenizer.sep_token_id,
                   "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
            model = load_original_blip(source, ids)
        else:
            model = BlipForConditionalGeneration.from_pretrained(
                source, local_files_only=_local_only(source), state_dict=_pickled_state(source)
            )
    except (OSError, ValueError) as e:
        where = (
            "" if Path(processor_from).is_dir() else " (not in the local Hugging Face cache, and the hub is offline?)"
        )
        raise ModelLoadError(f"Could not load the BLIP model {processor_from}{where}: {e}") from e
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return Blip(model.to(target).eval(), processor, target)


def _pickled_state(folder: str) -> dict[str, torch.Tensor] | None:
    """A local folder's pytorch_model.bin read safely here, else None (transformers reads safetensors itself): its
    own reader calls torch.load, which inside the WebUI is a checker that refuses current torch files."""
    from lib_sdtrain.utils.torch_pickle import load_tensor_dict, pickled_weights

    weights = pickled_weights(folder)
    return load_tensor_dict(weights) if weights else None


@torch.no_grad()
def _generate(blip: Blip, images: list, options: CaptionOptions, generator_seed: int) -> list[str]:
    inputs = blip.processor(images=images, text=[PROMPT] * len(images), return_tensors="pt").to(blip.device)
    torch.manual_seed(generator_seed)
    if options.beam_search:
        kwargs = {"num_beams": options.num_beams, "repetition_penalty": 1.0, "do_sample": False}
    else:
        kwargs = {"do_sample": True, "top_p": options.top_p, "repetition_penalty": 1.1}
    out = blip.model.generate(**inputs, min_length=options.min_length, max_length=options.max_length, **kwargs)
    texts = blip.processor.batch_decode(out, skip_special_tokens=True)
    return [t.strip().removeprefix(PROMPT).strip() for t in texts]


def _too_small(image: Image.Image) -> str | None:
    # A picture this small says nothing to caption, and transformers 4.30 takes an image 1 or 3 pixels high for
    # channels-first and fails the whole batch.
    if min(image.size) < MIN_CAPTION_SIDE:
        return f"too small to caption ({image.width}x{image.height} pixels; at least {MIN_CAPTION_SIDE} on each side)"
    return None


def caption_images(
    folder: str | Path, blip: Blip, options: CaptionOptions, progress: Progress | None = None
) -> ImageJobSummary:
    progress = progress or Progress()
    listing = dataset_images(folder, options.recursive, progress, writable=True)
    summary = ImageJobSummary()
    todo = images_to_process(listing, options.caption_extension, not options.overwrite, summary)
    progress.start(len(todo), "captioning")
    for start, batch, pictures in image_batches(todo, options.batch_size, summary, progress, _too_small):
        for path, caption in zip(batch, _generate(blip, pictures, options, options.seed + start), strict=True):
            atomic_write_text(path.with_suffix(options.caption_extension), caption + "\n")
            summary.written += 1
            if options.debug:
                progress.message(f"{path}: {caption}")
    progress.finish()
    return summary
