"""txt2img and img2img with an optional LoRA, for trying a trained LoRA in the standalone app."""

from __future__ import annotations

import contextlib
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from lib_sdtrain.errors import SDTrainError
from lib_sdtrain.generate.lora import apply_lora
from lib_sdtrain.generate.pipeline import SAMPLERS, build_pipeline
from lib_sdtrain.models.sd_model import SDModel
from lib_sdtrain.utils.progress import Progress


@dataclass
class GenerationRequest:
    model: str
    """A checkpoint file, a diffusers folder or a hub id (what load_sd_model takes)."""
    prompt: str
    negative_prompt: str = ""
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    seed: int = -1
    """-1: a random seed. Image i of a batch uses seed + i, so any one image can be made again alone."""
    batch_count: int = 1
    sampler: str = "euler"
    lora_path: str | None = None
    lora_weight: float = 1.0


class Generator:
    """Keeps the last loaded model (one at a time: SD models are large) and generates with it; one generation at a
    time per Generator, since a LoRA is applied to the shared model for the duration of a call."""

    def __init__(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        self.device = torch.device(device) if device is not None else _default_device()
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self._model: SDModel | None = None
        self._source: str | None = None
        self._lock = threading.Lock()

    def model(self, source: str) -> SDModel:
        """The model for `source`, loaded on first use (replacing the one held before)."""
        from lib_sdtrain.models.loading import load_sd_model

        if self._model is None or self._source != str(source):
            self.unload()
            self._model = load_sd_model(source, dtype=self.dtype).to(self.device)
            self._source = str(source)
        return self._model

    def unload(self) -> None:
        self._model, self._source = None, None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def txt2img(self, request: GenerationRequest, progress: Progress | None = None) -> list[Image.Image]:
        return self._run(request, None, 1.0, progress)

    def img2img(
        self,
        request: GenerationRequest,
        init_image: Image.Image,
        strength: float = 0.75,
        progress: Progress | None = None,
    ) -> list[Image.Image]:
        """`init_image` is resized to the request's size; `strength` 0-1 is how much of it is noised away."""
        if not 0 < strength <= 1:
            raise SDTrainError(f"Denoising strength must be above 0 and at most 1, not {strength}.")
        if int(request.steps * strength) < 1:
            raise SDTrainError(f"{request.steps} steps at strength {strength} leave no step to run; use more steps.")
        return self._run(request, init_image, strength, progress)

    def _run(
        self, request: GenerationRequest, init_image: Image.Image | None, strength: float, progress: Progress | None
    ) -> list[Image.Image]:
        width, height = _check(request)
        progress = progress or Progress()
        seed = request.seed if request.seed >= 0 else random.randrange(2**32 - request.batch_count)
        with self._lock:
            model = self.model(request.model)
            pipe = build_pipeline(model, request.sampler, img2img=init_image is not None)
            steps_per_image = int(request.steps * strength) if init_image is not None else request.steps
            progress.start(steps_per_image * request.batch_count, "generating")
            images = []
            with self._lora(model, request):
                for index in range(request.batch_count):
                    progress.check_cancelled()
                    kwargs = _pipe_arguments(request, width, height, seed + index, progress)
                    if init_image is not None:
                        kwargs.update(image=_resized(init_image, width, height), strength=strength)
                    else:
                        kwargs.update(width=width, height=height)
                    image = pipe(**kwargs).images[0]
                    image.info["parameters"] = _infotext(request, width, height, seed + index, strength, init_image)
                    images.append(image)
                    progress.image(image, f"seed {seed + index}")
            progress.finish()
        return images

    @staticmethod
    def _lora(model: SDModel, request: GenerationRequest) -> contextlib.AbstractContextManager:
        if not request.lora_path:
            return contextlib.nullcontext()
        return apply_lora(model, request.lora_path, request.lora_weight)


def _default_device() -> torch.device:
    from lib_sdtrain.host import standalone

    return standalone.device()


def _check(request: GenerationRequest) -> tuple[int, int]:
    """The size rounded down to multiples of 8 (the VAE's factor); clear errors for values the pipeline would
    reject with a traceback."""
    if request.sampler not in SAMPLERS:
        raise SDTrainError(f"Sampler must be one of {', '.join(SAMPLERS)}, not {request.sampler!r}.")
    if request.steps < 1 or request.batch_count < 1:
        raise SDTrainError("Steps and batch count must be at least 1.")
    width, height = request.width - request.width % 8, request.height - request.height % 8
    if width < 8 or height < 8:
        raise SDTrainError(f"Width and height must be at least 8 pixels, not {request.width}x{request.height}.")
    return width, height


def _pipe_arguments(
    request: GenerationRequest, width: int, height: int, seed: int, progress: Progress
) -> dict[str, Any]:
    def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
        progress.advance()
        progress.check_cancelled()  # Cancelled leaves the pipeline; the LoRA context still restores the model
        return tensors

    return {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt or None,
        "num_inference_steps": request.steps,
        "guidance_scale": request.cfg_scale,
        "generator": torch.Generator(device="cpu").manual_seed(seed),  # the same image on every device
        "callback_on_step_end": on_step_end,
    }


def _resized(image: Image.Image, width: int, height: int) -> Image.Image:
    image = image.convert("RGB")
    return image if image.size == (width, height) else image.resize((width, height), Image.Resampling.LANCZOS)


def _infotext(request: GenerationRequest, width: int, height: int, seed: int, strength: float, init_image: Any) -> str:
    """The WebUI's generation-parameters text (shown by PNG Info when the image is saved with it)."""
    fields = [
        f"Steps: {request.steps}",
        f"Sampler: {'Euler' if request.sampler == 'euler' else 'DDIM'}",
        f"CFG scale: {request.cfg_scale:g}",
        f"Seed: {seed}",
        f"Size: {width}x{height}",
        f"Model: {Path(request.model).stem}",
    ]
    if init_image is not None:
        fields.append(f"Denoising strength: {strength:g}")
    if request.lora_path:
        fields.append(f"Lora: {Path(request.lora_path).stem}:{request.lora_weight:g}")
    negative = f"\nNegative prompt: {request.negative_prompt}" if request.negative_prompt else ""
    return f"{request.prompt}{negative}\n{', '.join(fields)}"
