"""SD-Train: dataset tools, training loop and model I/O for Stable Diffusion."""

__version__ = "0.1.0"
