"""The in-memory model every stage works with: diffusers/transformers modules plus what is needed to save them back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

SDVersion = Literal["sd1", "sd2", "sdxl"]
PredictionType = Literal["epsilon", "v_prediction"]


@dataclass
class SDModel:
    """A loaded Stable Diffusion model.

    `extra_ldm_state` keeps the tensors of a single-file checkpoint that have no place in the diffusers modules
    (SD2's last text-encoder block, which SD never uses, OpenCLIP's projection, ...), so saving writes them back
    and a load -> save round trip is exact.
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    version: SDVersion
    prediction_type: PredictionType
    source: str = ""
    source_name: str = ""
    """How the user knows the base model (the WebUI's checkpoint name); empty: the file or folder name of source."""
    source_hash: str = ""
    """The base checkpoint's old 8-digit hash when known (kohya's ss_sd_model_hash)."""
    source_sha256: str = ""
    """Its full sha256 when known (kohya's ss_new_sd_model_hash)."""
    scheduler_config: dict = field(default_factory=dict)
    extra_ldm_state: dict[str, torch.Tensor] = field(default_factory=dict)
    text_encoder_2: CLIPTextModelWithProjection | None = None
    """SDXL's second text encoder (OpenCLIP bigG), whose pooled output also conditions the UNet; None for SD 1/2."""
    tokenizer_2: CLIPTokenizer | None = None

    @property
    def v_prediction(self) -> bool:
        return self.prediction_type == "v_prediction"

    @property
    def vae_scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def noise_scheduler(self) -> DDPMScheduler:
        """The training noise schedule (SD's: 1000 steps, scaled-linear betas 0.00085-0.012)."""
        config = {
            "num_train_timesteps": 1000,
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "clip_sample": False,
            "steps_offset": 1,
            **self.scheduler_config,
            "prediction_type": self.prediction_type,
        }
        return DDPMScheduler(**config)

    def lora_unet_names(self) -> Callable[[str], str] | None:
        """How kohya names this model's UNet modules in a LoRA: SDXL by their SGM paths (input_blocks_4_1_...),
        SD 1.x/2.x by their diffusers paths (None: as they are)."""
        if self.version != "sdxl":
            return None
        from lib_sdtrain.models import ldm_keys
        from lib_sdtrain.models.configs import unet_layout

        return partial(ldm_keys.unet_sgm_module_path, layout=unet_layout(self.unet.config))

    @property
    def text_encoders(self) -> list[CLIPTextModel]:
        return [self.text_encoder] + ([self.text_encoder_2] if self.text_encoder_2 is not None else [])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SDModel:
        for module in (self.unet, self.vae, *self.text_encoders):
            module.to(device=device, dtype=dtype)
        return self
