"""Sample images during training, from a prompt file as kohya reads it. A text file, one prompt per line:

a photo of (sks:1.2) --n blurry --w 512 --h 512 --d 42 --s 30 --l 7.5 --ss euler_a
# comment lines and blank lines are skipped

or kohya's .toml ([prompt] settings shared by each [[prompt.subset]]) or .json (a list of such lines, or of objects
with kohya's keys: prompt, negative_prompt, width, height, seed, sample_steps, scale, sample_sampler).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lib_sdtrain.errors import ConfigError, shorten
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
    sampler: str | None = None  # kohya's --ss; None: sample_sampler


# kohya's line flags (case-insensitive) -> (the prompt-dict key as kohya's .toml/.json write it, value pattern)
_FLAGS = {
    "w": ("width", r"\d+"),
    "h": ("height", r"\d+"),
    "d": ("seed", r"\d+"),
    "s": ("sample_steps", r"\d+"),
    "l": ("scale", r"[\d.]+"),
    "n": ("negative_prompt", r".*"),
    "ss": ("sample_sampler", r".+"),
}
_FLAG = re.compile(r"(\w+)(?:\s+(.*))?$", re.DOTALL)


def parse_prompt_line(line: str) -> SamplePrompt | None:
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    parts = line.split(" --")
    values: dict[str, Any] = {"prompt": parts[0].strip()}
    for part in parts[1:]:
        match = _FLAG.match(part.strip())
        flag = match[1].lower() if match else part.strip()
        if flag not in _FLAGS:
            raise ConfigError(
                f"sample_prompts: --{flag} in {shorten(line)} is not one of kohya's prompt options (--n negative, "
                "--w width, --h height, --d seed, --s steps, --l CFG scale, --ss sampler)."
            )
        key, pattern = _FLAGS[flag]
        value = (match[2] or "").strip() if match else ""
        if not re.fullmatch(pattern, value):
            raise ConfigError(f"sample_prompts: --{flag} {shorten(value)} in {shorten(line)} is not a valid value.")
        values[key] = value
    return prompt_from_dict(values)


def prompt_from_dict(values: dict[str, Any]) -> SamplePrompt:
    """A SamplePrompt from kohya's prompt dict (a .toml/.json entry, or a parsed line)."""
    from lib_sdtrain.train.config import SAMPLE_SAMPLERS

    unknown = set(values) - {"prompt", "subset", *(key for key, _ in _FLAGS.values())}
    if unknown:
        key, prompt = shorten(sorted(unknown)[0]), shorten(values.get("prompt", ""))
        raise ConfigError(f"sample_prompts: unknown key {key} in the entry of prompt {prompt}.")
    sampler = values.get("sample_sampler")
    if sampler is not None and str(sampler).lower() not in SAMPLE_SAMPLERS:
        raise ConfigError(f"sample_prompts: sampler {shorten(sampler)} is not one of {', '.join(SAMPLE_SAMPLERS)}.")
    try:
        return SamplePrompt(
            prompt=str(values.get("prompt", "")),
            negative=str(values.get("negative_prompt") or ""),
            width=int(values.get("width", 512)),
            height=int(values.get("height", 512)),
            seed=None if values.get("seed") is None else int(values["seed"]),
            steps=max(1, min(1000, int(values.get("sample_steps", 30)))),  # kohya's bounds
            scale=float(values.get("scale", 7.5)),
            sampler=None if sampler is None else str(sampler).lower(),
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"sample_prompts: prompt {shorten(values.get('prompt', ''))}: {e}") from None


def write_prompt_file(folder: str | Path, name: str, text: str) -> Path:
    """Prompts typed in a form, one per line, saved as `<folder>/<name>.prompts.txt` for `sample_prompts`."""
    from lib_sdtrain.utils.files import atomic_write_text, check_safe_name

    path = Path(folder) / f"{check_safe_name(name, 'output name')}.prompts.txt"
    atomic_write_text(path, text.strip() + "\n")
    return path


def read_prompt_file(path: str | Path) -> list[SamplePrompt]:
    """The prompts of a kohya prompt file: .toml and .json by their extension, any other as lines of text."""
    from lib_sdtrain.train.config import read_toml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sample_prompts file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        table = read_toml(path, "sample_prompts file").get("prompt", {})
        subsets = table.get("subset", []) if isinstance(table, dict) else None
        if not isinstance(subsets, list) or not all(isinstance(subset, dict) for subset in subsets):
            raise ConfigError(f"sample_prompts file {path.name}: expected [prompt] with [[prompt.subset]] tables.")
        return [prompt_from_dict({**table, **subset}) for subset in subsets]
    if suffix == ".json":
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"sample_prompts file {path.name} is not valid JSON: {e}") from None
        if not isinstance(entries, list):
            raise ConfigError(f"sample_prompts file {path.name}: expected a list of prompts.")
        for index, entry in enumerate(entries, 1):
            if not isinstance(entry, str | dict):
                raise ConfigError(
                    f"sample_prompts file {path.name}: entry {index} is neither a prompt line nor an object."
                )
        return [p for e in entries if (p := parse_prompt_line(e) if isinstance(e, str) else prompt_from_dict(e))]
    return [p for line in path.read_text(encoding="utf-8").splitlines() if (p := parse_prompt_line(line))]


def sample_scheduler(name: str, v_prediction: bool) -> Any:
    """kohya's get_my_scheduler: the diffusers scheduler for a sample_sampler name, on SD's training schedule
    (1000 steps, scaled-linear betas 0.00085-0.012; DDIM clips its x0 prediction, as kohya's does)."""
    import diffusers

    classes = {
        "ddim": "DDIMScheduler", "pndm": "PNDMScheduler", "lms": "LMSDiscreteScheduler",
        "euler": "EulerDiscreteScheduler", "euler_a": "EulerAncestralDiscreteScheduler",
        "dpmsolver": "DPMSolverMultistepScheduler", "dpmsolver++": "DPMSolverMultistepScheduler",
        "dpmsingle": "DPMSolverSinglestepScheduler", "heun": "HeunDiscreteScheduler",
        "dpm_2": "KDPM2DiscreteScheduler", "dpm_2_a": "KDPM2AncestralDiscreteScheduler",
    }  # fmt: skip
    name = name.lower().removeprefix("k_")
    extra: dict[str, Any] = {"algorithm_type": name} if name.startswith("dpmsolver") else {}
    if name == "dpmsolver":  # diffusers >= 0.26 refuses its default final sigma 0 here; sigma_min is the old end
        extra["final_sigmas_type"] = "sigma_min"
    if v_prediction:
        extra["prediction_type"] = "v_prediction"
    cls = getattr(diffusers, classes[name])
    try:
        scheduler = cls(
            num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", **extra
        )
    except ImportError as e:  # diffusers' LMS needs scipy
        raise ConfigError(f"The sample sampler {name} needs a package that is missing: {e}") from None
    if getattr(scheduler.config, "clip_sample", None) is False:
        scheduler.register_to_config(clip_sample=True)
    return scheduler


def check_samplers(prompts: list[SamplePrompt], default: str) -> None:
    """Set up each prompt's sampler with its steps before training, so a missing package or a step count the sampler
    cannot take (PNDM needs more than 3) fails now, not at the first sample."""
    for index, prompt in enumerate(prompts):
        name = prompt.sampler or default
        try:
            sample_scheduler(name, False).set_timesteps(prompt.steps)
        except (ValueError, IndexError) as e:
            raise ConfigError(
                f"Sample prompt {index + 1} ({prompt.prompt[:40]!r}): the {name} sampler cannot run {prompt.steps} "
                f"steps ({e}); give it more with --s, or choose another sampler with --ss."
            ) from None


@torch.no_grad()
def generate_samples(
    model, prompts: list[SamplePrompt], out_dir: Path, name: str, label: str, step: int, clip_skip: int,
    sampler: str = "ddim",
):  # fmt: skip
    """Render each prompt with the model as it is now (LoRA attached); returns [(path, image)]. `label` is kohya's
    file-name part: `e000003` after an epoch, `000500` after a step. `sampler` is sample_sampler; a prompt's --ss
    wins. Prompts are weighted and may be long, as kohya's sample pipeline reads them."""
    from lib_sdtrain.generate.pipeline import build_pipeline
    from lib_sdtrain.train.prompt_weights import weighted_prompt_states, weighted_prompt_states_sdxl

    pipe = build_pipeline(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d%H%M%S")
    results = []
    for index, sample in enumerate(prompts):
        seed = sample.seed if sample.seed is not None else step * 100 + index
        pipe.scheduler = sample_scheduler(sample.sampler or sampler, model.v_prediction)
        if model.version == "sdxl":
            states, pooled = weighted_prompt_states_sdxl(model, [sample.prompt, sample.negative])
            texts: dict[str, Any] = {
                "prompt_embeds": states[:1], "negative_prompt_embeds": states[1:],
                "pooled_prompt_embeds": pooled[:1], "negative_pooled_prompt_embeds": pooled[1:],
            }  # fmt: skip
        else:
            states = weighted_prompt_states(
                model.tokenizer, model.text_encoder, [sample.prompt, sample.negative], clip_skip
            )
            texts = {"prompt_embeds": states[:1], "negative_prompt_embeds": states[1:]}
        image = pipe(
            **texts,
            width=max(64, sample.width - sample.width % 8),
            height=max(64, sample.height - sample.height % 8),
            num_inference_steps=sample.steps,
            guidance_scale=sample.scale,
            generator=torch.Generator(device="cpu").manual_seed(seed),
        ).images[0]
        path = out_dir / f"{name}_{label}_{index:02d}_{stamp}_{seed}.png"
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG")
        results.append((path, image))
    return results
