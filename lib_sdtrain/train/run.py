"""One training run as the UI and the API start it: the model from the host when asked, the run's config saved
beside its outputs (so it can be loaded back into the form), the loop, and what the run produced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lib_sdtrain.errors import ModelLoadError
from lib_sdtrain.host.types import LOADED_CHECKPOINT
from lib_sdtrain.train.config import TrainConfig, config_values
from lib_sdtrain.utils.files import atomic_write_text
from lib_sdtrain.utils.progress import Progress

RUN_CONFIG_SUFFIX = ".sdtrain.toml"


def run_config_path(config: TrainConfig) -> Path:
    return Path(config.output_dir) / f"{config.output_name}{RUN_CONFIG_SUFFIX}"


def save_run_config(config: TrainConfig) -> Path:
    from lib_sdtrain.train.options import config_to_toml

    path = run_config_path(config)
    atomic_write_text(path, config_to_toml(config_values(config), only_changed=False))
    return path


def list_run_configs(folder: str | Path) -> list[Path]:
    """Saved run configs under `folder` (recursively), newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(folder.rglob(f"*{RUN_CONFIG_SUFFIX}"), key=lambda p: p.stat().st_mtime, reverse=True)


def list_states(output_dir: str | Path, output_name: str) -> list[Path]:
    """The resumable states a run of this name left (`<name>[-suffix]-state` folders), newest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    states = [p for p in folder.glob(f"{output_name}*-state") if p.is_dir()]
    return sorted(states, key=lambda p: p.stat().st_mtime, reverse=True)


def run_training(config: TrainConfig, progress: Progress) -> dict[str, Any]:
    from lib_sdtrain import host
    from lib_sdtrain.train.loop import train

    model = None
    if config.pretrained_model_name_or_path == LOADED_CHECKPOINT:
        model = host.current().load_webui_model()
        if model is None:
            raise ModelLoadError("No checkpoint is loaded in the WebUI. Load one, or choose a model file.")
    config_path = save_run_config(config)
    progress.message(f"Run config saved as {config_path}")
    result = train(config, model=model, progress=progress)
    return {
        "output": str(result.output) if result.output else None,
        "steps": result.steps,
        "final_loss": result.losses[-1] if result.losses else None,
        "state_dir": str(result.state_dir) if result.state_dir else None,
        "samples": [str(p) for p in result.samples],
        "config": str(config_path),
    }
