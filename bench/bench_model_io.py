"""Load time and peak memory of a full-size SD1.5-architecture single-file checkpoint (random weights).

    .venv/bin/python bench/bench_model_io.py [--workdir DIR] [--precision fp16|fp32]

Writes the checkpoint with our saver, then loads it in fresh processes (so peak RSS is the load alone):
ours (`load_sd_model`) and diffusers' `StableDiffusionPipeline.from_single_file` (the peer), in one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def prepare(workdir: Path, precision: str) -> tuple[Path, Path]:
    import torch

    from bench.sd15_architecture import random_sd15_model, write_config_folder
    from lib_sdtrain.demo.tiny_models import write_tiny_tokenizer
    from lib_sdtrain.models.saving import save_sd_checkpoint

    tokenizer = write_tiny_tokenizer(workdir / "tokenizer")
    checkpoint = workdir / f"random-sd15-{precision}.safetensors"
    if not checkpoint.exists():
        started = time.perf_counter()
        model = random_sd15_model(tokenizer)
        save_sd_checkpoint(model, checkpoint, dtype=torch.float16 if precision == "fp16" else torch.float32)
        print(
            f"wrote {checkpoint.name}: {checkpoint.stat().st_size / 2**30:.2f} GiB"
            f" in {time.perf_counter() - started:.1f} s"
        )
    return checkpoint, write_config_folder(workdir / "config", tokenizer)


def measure(kind: str, checkpoint: Path, config: Path) -> dict:
    """Run one load in a child process and return its wall time and peak RSS."""
    code = f"""
import json, resource, sys, time
sys.path.insert(0, {str(ROOT)!r})
import torch
from diffusers import StableDiffusionPipeline
from lib_sdtrain.models.loading import load_sd_model
started = time.perf_counter()  # imports excluded: both sides import the same libraries
if {kind!r} == "ours":
    model = load_sd_model({str(checkpoint)!r}, tokenizer={str(config / "tokenizer")!r})
    params = sum(p.numel() for m in (model.unet, model.vae, model.text_encoder) for p in m.parameters())
else:
    pipe = StableDiffusionPipeline.from_single_file({str(checkpoint)!r}, config={str(config)!r},
        local_files_only=True, safety_checker=None, torch_dtype=torch.float32)
    params = sum(p.numel() for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters())
seconds = time.perf_counter() - started
print(json.dumps({{"seconds": seconds, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                   "parameters_m": params / 1e6}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None, help="where to keep the 2-4 GB checkpoint")
    parser.add_argument("--precision", choices=["fp16", "fp32"], default="fp16", help="precision of the file")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sdtrain-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint, config = prepare(workdir, args.precision)
    print(f"file: {checkpoint} ({checkpoint.stat().st_size / 2**30:.2f} GiB), loaded as fp32 on CPU")
    results = {}
    for kind in ("ours", "diffusers"):
        runs = [measure(kind, checkpoint, config) for _ in range(args.repeat)]
        best = min(runs, key=lambda r: r["seconds"])
        results[kind] = best
        print(
            f"{kind:>9}: {best['seconds']:.1f} s (best of {args.repeat}), peak RSS {best['peak_rss_gib']:.2f} GiB, "
            f"{best['parameters_m']:.0f}M parameters"
        )
    ratio = results["diffusers"]["seconds"] / results["ours"]["seconds"]
    mem = results["diffusers"]["peak_rss_gib"] / results["ours"]["peak_rss_gib"]
    print(f"diffusers / ours: time x{ratio:.2f}, peak memory x{mem:.2f}")


if __name__ == "__main__":
    main()
