"""diffusers pipelines built around a loaded SDModel's own modules (nothing is copied or loaded again)."""

from __future__ import annotations

from typing import Any

from lib_sdtrain.models.sd_model import SDModel

SAMPLERS = ("euler", "ddim")


def make_scheduler(model: SDModel, sampler: str = "ddim") -> Any:
    """An inference scheduler on the model's training noise schedule (and its prediction type)."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    config = model.noise_scheduler().config
    if sampler == "ddim":
        return DDIMScheduler.from_config(config, clip_sample=False, set_alpha_to_one=False)
    if sampler == "euler":
        return EulerDiscreteScheduler.from_config(config)
    raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}")


def build_pipeline(model: SDModel, sampler: str = "ddim", img2img: bool = False) -> Any:
    """StableDiffusionPipeline (or the img2img one) on the model's UNet, VAE, text encoder and tokenizer; the SDXL
    pipelines, with both text encoders, for an SDXL model."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    if model.version == "sdxl":
        from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

        xl = StableDiffusionXLImg2ImgPipeline if img2img else StableDiffusionXLPipeline
        pipe = xl(
            vae=model.vae, text_encoder=model.text_encoder, text_encoder_2=model.text_encoder_2,
            tokenizer=model.tokenizer, tokenizer_2=model.tokenizer_2, unet=model.unet,
            scheduler=make_scheduler(model, sampler),
        )  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        return pipe
    cls = StableDiffusionImg2ImgPipeline if img2img else StableDiffusionPipeline
    pipe = cls(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=make_scheduler(model, sampler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
