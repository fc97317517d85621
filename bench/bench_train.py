"""Training speed and memory: SD-Train's loop against a bare diffusers-style loop, same model, batch and data.

    .venv/bin/python bench/bench_train.py [--steps 30] [--batch 4] [--full --resolution 512]

Tiny model on CPU by default; `--full` uses the SD1.5 architecture with random weights (meant for a GPU).
Each measurement runs in a fresh process; the first 3 steps are warm-up and not timed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORKER = r"""
import json, resource, sys, time
sys.path.insert(0, ROOT)
import torch
from lib_sdtrain.models.loading import load_sd_model
from lib_sdtrain.train.settings import load_config
from lib_sdtrain.train.loop import Trainer
from lib_sdtrain.train import text
from lib_sdtrain.utils.progress import CallbackProgress

settings = json.loads(SETTINGS)
steps = settings["max_train_steps"]
times = []
if KIND == "bare":
    # The loop of diffusers' train_text_to_image.py, reduced to its core, on the same cached latents.
    model = load_sd_model(settings["pretrained_model_name_or_path"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    unet, scheduler = model.unet.train(), model.noise_scheduler()
    unet.requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    side = int(settings["resolution"].split(",")[0]) // 8
    latents = torch.randn(settings["train_batch_size"], 4, side, side, device=device)
    ids = text.tokenize(model.tokenizer, ["sks"] * settings["train_batch_size"])
    for step in range(steps):
        started = time.perf_counter()
        with torch.no_grad():
            states = text.encode(model.text_encoder, ids)
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (latents.shape[0],), device=device)
        pred = unet(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=states).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step(); opt.zero_grad(set_to_none=True)
        if device == "cuda": torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
else:
    config = load_config(None, settings)
    last = [time.perf_counter()]
    def on_event(event, payload):
        if event == "advance":
            now = time.perf_counter(); times.append(now - last[0]); last[0] = now
    trainer = Trainer(config, None, CallbackProgress(on_event))
    last[0] = time.perf_counter()
    trainer.run()
timed = times[3:]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
vram = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
print(json.dumps({"steps_per_s": len(timed) / sum(timed), "peak_rss_gib": peak, "peak_vram_gib": vram}))
"""


def make_dataset(folder: Path, side: int, count: int = 8) -> dict[str, str]:
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    meta = {}
    for i in range(count):
        np.savez(folder / f"img{i}.npz", latents=np.random.randn(4, side // 8, side // 8).astype("float32"))
        meta[f"img{i}"] = {"caption": "sks", "train_resolution": [side, side]}
    (folder / "meta_lat.json").write_text(json.dumps(meta))
    return {"train_data_dir": str(folder), "in_json": str(folder / "meta_lat.json")}


def make_model(workdir: Path, full: bool) -> Path:
    if not full:
        from lib_sdtrain.demo.tiny_models import write_tiny_diffusers_model

        return write_tiny_diffusers_model(workdir / "tiny-model")
    from bench.sd15_architecture import random_sd15_model
    from lib_sdtrain.demo.tiny_models import write_tiny_tokenizer
    from lib_sdtrain.models.saving import save_sd_checkpoint

    write_tiny_tokenizer(workdir / "tokenizer")
    from transformers import CLIPTokenizer

    model = random_sd15_model(CLIPTokenizer.from_pretrained(str(workdir / "tokenizer")))
    return save_sd_checkpoint(model, workdir / "sd15.safetensors")


def run(kind: str, settings: dict) -> dict:
    code = WORKER.replace("ROOT", repr(str(ROOT))).replace("SETTINGS", repr(json.dumps(settings)))
    code = code.replace("KIND", repr(kind))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--full", action="store_true", help="SD1.5 architecture, random weights (GPU)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sdtrain-bench-train-"))
    model = make_model(workdir, args.full)
    base = {
        "pretrained_model_name_or_path": str(model),
        "tokenizer": str(workdir / "tokenizer") if args.full else None,
        **make_dataset(workdir / "data", args.resolution),
        "resolution": f"{args.resolution},{args.resolution}",
        "train_batch_size": args.batch,
        "max_train_steps": args.steps,
        "dataset_repeats": 100,
        "mixed_precision": args.mixed_precision,
        "output_dir": str(workdir / "out"),
        "learning_rate": 1e-5,
        "save_precision": "fp16",
    }
    base = {k: v for k, v in base.items() if v is not None}
    results = {
        "bare diffusers loop (full UNet)": run("bare", base),
        "SD-Train full fine-tune": run("ours", {**base, "network_module": None}),
        "SD-Train LoRA rank 8": run("ours", {**base, "network_module": "networks.lora", "network_dim": 8}),
    }
    reference = results["bare diffusers loop (full UNet)"]["steps_per_s"]
    setup = f"batch {args.batch}, {args.resolution}px, {args.steps} steps, mixed precision {args.mixed_precision}"
    print(f"{'loop':<34} {setup}")
    for name, r in results.items():
        print(
            f"{name:<34} {r['steps_per_s']:7.2f} steps/s (x{r['steps_per_s'] / reference:.2f})  "
            f"peak RSS {r['peak_rss_gib']:.2f} GiB  peak VRAM {r['peak_vram_gib']:.2f} GiB"
        )


if __name__ == "__main__":
    main()
