"""The tiny models live in lib_sdtrain.demo.tiny_models (the demo uses them too); re-exported for the tests."""

from lib_sdtrain.demo.tiny_models import (  # noqa: F401
    TEXT_HIDDEN,
    WORDS,
    tiny_pipeline,
    tiny_scheduler,
    tiny_text_encoder,
    tiny_unet,
    tiny_vae,
    write_tiny_diffusers_model,
    write_tiny_tokenizer,
)
