"""What kohya sd-scripts needs to run offline beside SD-Train, without installing anything into either venv.

kohya's training imports torchvision for four small things only (`transforms.Compose`, `ToTensor`, `Normalize`
in library/train_util.py, `transforms.functional.gaussian_blur` in library/utils.py, `functional.pil_to_tensor`
for sample images). Installing torchvision means a wheel matched to the exact torch build, which a CPU-only or
offline machine may not have; `write_torchvision_shim` instead writes a stand-in package with just those, built on
torch and numpy, into a folder that goes on kohya's PYTHONPATH only. bitsandbytes is imported only for the 8-bit
optimizers, which the benchmark does not use.

kohya loads the CLIP tokenizer from the hub (`openai/clip-vit-large-patch14`) unless `--tokenizer_cache_dir` holds
a saved copy under the hub id with "/" replaced by "_"; `write_kohya_tokenizer_cache` puts one there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

SHIM_INIT = '''"""Stand-in for torchvision: only what kohya's training uses (written by bench/bench_vs_kohya.py)."""
__version__ = "0.0+sdtrain-bench-shim"
from . import transforms  # noqa: E402,F401
'''

SHIM_TRANSFORMS = '''"""Compose, ToTensor and Normalize as torchvision's, for PIL images and HWC numpy arrays."""
import numpy as np
import torch

from . import functional  # noqa: F401


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, value):
        for transform in self.transforms:
            value = transform(value)
        return value


class ToTensor:
    """HWC uint8 (PIL or numpy) -> CHW float in [0, 1]; other dtypes are converted without scaling."""

    def __call__(self, pic):
        array = np.asarray(pic)
        if array.ndim == 2:
            array = array[:, :, None]
        tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        return tensor.float().div(255) if array.dtype == np.uint8 else tensor.float()


class Normalize:
    def __init__(self, mean, std, inplace=False):
        self.mean, self.std = mean, std

    def __call__(self, tensor):
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        return (tensor - mean) / std
'''

SHIM_FUNCTIONAL = '''"""pil_to_tensor and gaussian_blur with torchvision's semantics."""
import numpy as np
import torch
import torch.nn.functional as F


def pil_to_tensor(pic):
    array = np.asarray(pic)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def _kernel(size, sigma, dtype, device):
    x = torch.linspace(-(size - 1) * 0.5, (size - 1) * 0.5, size, dtype=dtype, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(img, kernel_size, sigma=None):
    """Separable Gaussian blur of (..., C, H, W) with reflect padding, as torchvision does."""
    sizes = [kernel_size, kernel_size] if isinstance(kernel_size, int) else list(kernel_size)
    if sigma is None:
        sigma = [0.3 * ((k - 1) * 0.5 - 1) + 0.8 for k in sizes]
    sigmas = [float(sigma), float(sigma)] if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
    if len(sigmas) == 1:
        sigmas = sigmas * 2
    dtype = img.dtype if img.is_floating_point() else torch.float32
    x = img.to(dtype)
    shape = x.shape
    x = x.reshape(-1, shape[-3], shape[-2], shape[-1])
    channels = x.shape[1]
    kx = _kernel(sizes[0], sigmas[0], dtype, x.device).view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    ky = _kernel(sizes[1], sigmas[1], dtype, x.device).view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    pad = [sizes[0] // 2, sizes[0] // 2, sizes[1] // 2, sizes[1] // 2]
    x = F.pad(x, pad, mode="reflect")
    x = F.conv2d(F.conv2d(x, kx, groups=channels), ky, groups=channels)
    x = x.reshape(shape)
    return x if img.is_floating_point() else x.round().to(img.dtype)
'''


def write_torchvision_shim(folder: Path) -> Path:
    """Write the stand-in package under `folder` (put `folder` on kohya's PYTHONPATH) and return `folder`."""
    package = folder / "torchvision"
    (package / "transforms").mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(SHIM_INIT)
    (package / "transforms" / "__init__.py").write_text(SHIM_TRANSFORMS)
    (package / "transforms" / "functional.py").write_text(SHIM_FUNCTIONAL)
    return folder


CPU_SAMPLING_PATCH = '''"""Lets kohya v0.8.7 save samples on a CPU-only torch (written by bench/bench_vs_kohya.py).

Its sample_image_inference calls `torch.cuda.device(torch.cuda.current_device())` around `empty_cache()` with no
CUDA check, which raises "Torch not compiled with CUDA enabled" after the image is made. Without CUDA both become
no-ops here; with CUDA nothing changes.
"""
import contextlib

import torch

if not torch.cuda.is_available():
    torch.cuda.current_device = lambda: 0
    torch.cuda.device = lambda device: contextlib.nullcontext()
'''


def write_cpu_sampling_patch(folder: Path) -> Path:
    """A sitecustomize.py that works around kohya's CUDA-only sample-image code; put `folder` on PYTHONPATH only for
    runs that sample (it imports torch at interpreter start)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(CPU_SAMPLING_PATCH)
    return folder


def write_kohya_tokenizer_cache(
    tokenizer_dir: Path, cache_dir: Path, hub_id: str = "openai/clip-vit-large-patch14"
) -> Path:
    """Copy a saved CLIP tokenizer to where kohya's `--tokenizer_cache_dir` looks for it; return the cache dir."""
    target = cache_dir / hub_id.replace("/", "_")
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(tokenizer_dir, target)
    return cache_dir
