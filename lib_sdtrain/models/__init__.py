"""Model I/O: load Stable Diffusion 1.x/2.x from single-file checkpoints or diffusers folders, save them back."""

from lib_sdtrain.models.sd_model import SDModel

__all__ = ["SDModel"]
