"""Generation for trying a trained LoRA: txt2img/img2img on a loaded SD model, with a LoRA file applied on the fly."""

from lib_sdtrain.generate.generator import GenerationRequest, Generator
from lib_sdtrain.generate.lora import AppliedLora, apply_lora, list_loras
from lib_sdtrain.generate.pipeline import SAMPLERS, build_pipeline

__all__ = ["SAMPLERS", "AppliedLora", "GenerationRequest", "Generator", "apply_lora", "build_pipeline", "list_loras"]
