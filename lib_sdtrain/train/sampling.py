"""Sample images during training, from a prompt file in kohya's syntax:

a photo of sks --n blurry --w 512 --h 512 --d 42 --s 30 --l 7.5
# comment lines and blank lines are skipped
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lib_sdtrain.utils.files import atomic_path


@dataclass
class SamplePrompt:
    prompt: str
    negative: str = ""
    width: int = 512
    height: int = 512
    seed: int | None = None
    steps: int = 30
    scale: float = 7.5


_OPTION = re.compile(r"^(n|w|h|d|s|l)\s+(.*)$")


def parse_prompt_line(line: str) -> SamplePrompt | None:
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    parts = line.split(" --")
    sample = SamplePrompt(prompt=parts[0].strip())
    for part in parts[1:]:
        m = _OPTION.match(part.strip())
        if not m:
            continue
        key, value = m[1], m[2].strip()
        if key == "n":
            sample.negative = value
        elif key == "w":
            sample.width = int(value)
        elif key == "h":
            sample.height = int(value)
        elif key == "d":
            sample.seed = int(value)
        elif key == "s":
            sample.steps = int(value)
        elif key == "l":
            sample.scale = float(value)
    return sample


def write_prompt_file(folder: str | Path, name: str, text: str) -> Path:
    """Prompts typed in a form, one per line, saved as `<folder>/<name>.prompts.txt` for `sample_prompts`."""
    from lib_sdtrain.utils.files import atomic_write_text, check_safe_name

    path = Path(folder) / f"{check_safe_name(name, 'output name')}.prompts.txt"
    atomic_write_text(path, text.strip() + "\n")
    return path


def read_prompt_file(path: str | Path) -> list[SamplePrompt]:
    from lib_sdtrain.errors import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sample_prompts file not found: {path}")
    prompts = [p for line in path.read_text(encoding="utf-8").splitlines() if (p := parse_prompt_line(line))]
    return prompts


@torch.no_grad()
def generate_samples(
    model, prompts: list[SamplePrompt], out_dir: Path, name: str, label: str, step: int, clip_skip: int
):
    """Render each prompt with the model as it is now (LoRA attached); returns [(path, image)]. `label` is kohya's
    file-name part: `e000003` after an epoch, `000500` after a step."""
    from lib_sdtrain.generate.pipeline import build_pipeline

    pipe = build_pipeline(model, sampler="ddim")
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d%H%M%S")
    results = []
    for index, sample in enumerate(prompts):
        seed = sample.seed if sample.seed is not None else step * 100 + index
        image = pipe(
            sample.prompt,
            negative_prompt=sample.negative or None,
            width=sample.width - sample.width % 8,
            height=sample.height - sample.height % 8,
            num_inference_steps=sample.steps,
            guidance_scale=sample.scale,
            generator=torch.Generator(device="cpu").manual_seed(seed),
            clip_skip=clip_skip - 1 if clip_skip > 1 else None,
        ).images[0]
        path = out_dir / f"{name}_{label}_{index:02d}_{stamp}_{seed}.png"
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG")
        results.append((path, image))
    return results
