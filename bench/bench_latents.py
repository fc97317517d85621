"""Images/s of latent caching (`sdtrain buckets`), against a bare loop doing the same work.

    .venv/bin/python bench/bench_latents.py [--images 24] [--batch_size 4] [--workers 2] [--full] [--device cuda]

Writes random images of mixed sizes (so they fall into several buckets) and runs, in one process:
- ours: `cache_latents` (bucket assignment, resize + crop, batched VAE encode, atomic .npz writes, metadata);
- peer: a bare loop, one image at a time: Pillow open -> resize -> crop -> `vae.encode(...).latent_dist.sample()`
  -> `np.savez`, which is what kohya's script does per image.
Default VAE: the tiny test VAE (4 levels, 32 channels) on the CPU. `--full`: the SD1.5 VAE architecture with random
weights (83M parameters), meant for a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = [(512, 512), (640, 480), (480, 640), (768, 512), (512, 768), (900, 400), (600, 600), (1024, 1024)]


def write_images(folder: Path, count: int) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    metadata = {}
    for i in range(count):
        width, height = SIZES[i % len(SIZES)]
        # Smooth random images: JPEG/PNG decoders do realistic work, unlike pure noise.
        small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC).save(folder / f"img{i:04d}.png")
        metadata[f"img{i:04d}"] = {"caption": f"image {i}"}
    meta = folder.parent / "meta_clean.json"
    meta.write_text(json.dumps(metadata))
    return meta


def make_vae(full: bool):
    if full:
        from bench.sd15_architecture import sd15_vae

        return sd15_vae()
    from lib_sdtrain.demo.tiny_models import tiny_vae

    return tiny_vae()


def run_ours(folder: Path, meta: Path, vae, args) -> float:
    from lib_sdtrain.prepare.buckets import BucketSettings, parse_resolution
    from lib_sdtrain.prepare.latents import LatentCacheOptions, cache_latents

    options = LatentCacheOptions(
        buckets=BucketSettings(parse_resolution(args.max_resolution)),
        batch_size=args.batch_size,
        workers=args.workers,
    )
    started = time.perf_counter()
    cache_latents(folder, meta, folder.parent / "meta_lat.json", vae, options)
    _sync(vae)
    return time.perf_counter() - started


def run_bare(folder: Path, vae, args) -> float:
    import numpy as np
    import torch
    from PIL import Image

    from lib_sdtrain.prepare.buckets import BucketAssigner, BucketSettings, parse_resolution

    assigner = BucketAssigner(BucketSettings(parse_resolution(args.max_resolution)))
    started = time.perf_counter()
    for path in sorted(folder.glob("*.png")):
        image = Image.open(path).convert("RGB")
        choice = assigner.select(*image.size)
        image = image.resize(choice.resized_size, Image.Resampling.LANCZOS)
        left = (image.width - choice.bucket[0]) // 2
        top = (image.height - choice.bucket[1]) // 2
        image = image.crop((left, top, left + choice.bucket[0], top + choice.bucket[1]))
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        with torch.no_grad():
            latents = vae.encode(x.to(vae.device, vae.dtype)).latent_dist.sample().float().cpu().numpy()
        np.savez(path.with_name(path.stem + "_bare.npz"), latents=latents[0])
    _sync(vae)
    return time.perf_counter() - started


def _sync(vae) -> None:
    import torch

    if vae.device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="image-loading threads for ours")
    parser.add_argument("--max_resolution", default="512,512")
    parser.add_argument("--full", action="store_true", help="SD1.5 VAE architecture (random weights)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    args = parser.parse_args()

    torch.manual_seed(0)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    vae = make_vae(args.full).to(args.device, dtype).eval()
    with tempfile.TemporaryDirectory(prefix="sdtrain-bench-latents-") as tmp:
        folder = Path(tmp) / "data"
        meta = write_images(folder, args.images)
        run_bare(folder, vae, args)  # warm-up (kernels, allocator, file cache), not timed
        bare = run_bare(folder, vae, args)
        ours = run_ours(folder, meta, vae, args)
    name = "SD1.5 VAE (random weights)" if args.full else "tiny test VAE"
    on_gpu = args.device.startswith("cuda")
    device = torch.cuda.get_device_name() if on_gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}, {args.dtype}, {device}; {args.images} images, max resolution {args.max_resolution}")
    print(f"  ours (batch {args.batch_size}, {args.workers} loader threads): {args.images / ours:.2f} images/s")
    print(f"  bare loop (batch 1, no threads):                {args.images / bare:.2f} images/s")
    print(f"  ours / bare: x{bare / ours:.2f}")


if __name__ == "__main__":
    main()
