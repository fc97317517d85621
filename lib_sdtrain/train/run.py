"""One training run as the UI and the API start it: the model from the host when asked, the run's config saved
beside its outputs (so it can be loaded back into the form), the loop, and what the run produced."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lib_sdtrain.errors import Cancelled, ModelLoadError
from lib_sdtrain.host.types import LOADED_CHECKPOINT
from lib_sdtrain.train.config import TrainConfig, config_values
from lib_sdtrain.train.output_lock import hold_output
from lib_sdtrain.train.register import CANCELLED, DONE, FAILED, PREFERRED_WEIGHT, Registered, register_run, summarize
from lib_sdtrain.train.safe_save import check_output_writable
from lib_sdtrain.utils.files import atomic_write_text
from lib_sdtrain.utils.progress import Progress
from lib_sdtrain.utils.status import Status

if TYPE_CHECKING:
    from lib_sdtrain.train.loop import Trainer

logger = logging.getLogger("sdtrain")

RUN_CONFIG_SUFFIX = ".sdtrain.toml"


def run_config_path(config: TrainConfig) -> Path:
    return Path(config.output_dir) / f"{config.output_name}{RUN_CONFIG_SUFFIX}"


def save_run_config(config: TrainConfig) -> Path:
    from lib_sdtrain.train.toml_writer import config_to_toml

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
    from lib_sdtrain.train.state import state_exists

    # A save cut by a crash leaves only `-state.tmp`/`-state.old`: offered under the state's own name (it loads).
    names = {p.name.removesuffix(".tmp").removesuffix(".old") for p in folder.glob(f"{output_name}*-state*")}
    states = [folder / name for name in names if name.endswith("-state") and state_exists(folder / name)]
    return sorted(states, key=_modified, reverse=True)


def _modified(state: Path) -> float:
    existing = next((p for p in (state, state.with_name(state.name + ".tmp")) if p.exists()), None)
    return (existing or state.with_name(state.name + ".old")).stat().st_mtime


def plan_text(config: TrainConfig) -> str:
    """What a run would do, read from the dataset without loading a model: for a "Check" before Start."""
    from lib_sdtrain.train import data
    from lib_sdtrain.train.loop import describe_items, step_plan

    items = data.collect_items(config)
    batches = len(data.epoch_batches(items, config.train_batch_size, config.seed, 0))
    total, epochs = step_plan(config, batches)
    return (
        f"{describe_items(items, config)}\n{batches} batches per epoch (batch size {config.train_batch_size}), "
        f"{epochs} epochs, {total} steps\nOutput: {Path(config.output_dir) / config.output_name}.safetensors"
    )


def run_training(config: TrainConfig, progress: Progress, run: str = "an SD-Train job") -> dict[str, Any]:
    """Train, then put what was saved where the host uses it (train/register.py), also after a cancel or an error
    that left a save; the exception's message then says where it went."""
    from lib_sdtrain import host as hosts
    from lib_sdtrain.train.loop import Trainer

    host = hosts.current()
    model = None
    if config.pretrained_model_name_or_path == LOADED_CHECKPOINT:
        model = host.load_webui_model()
        if model is None:
            raise ModelLoadError("No checkpoint is loaded in the WebUI. Load one, or choose a model file.")
    with hold_output(config.output_dir, config.output_name, run):  # a queued job claimed it already
        check_output_writable(config.output_dir, config.output_name)  # before the run config is written there
        config_path = save_run_config(config)
        progress.message(f"Run config saved as {config_path}")
        trainer = Trainer(config, model, progress)
        try:
            result = trainer.run()
        except Exception as e:
            status = CANCELLED if isinstance(e, Cancelled) else FAILED
            registered = _register(host, trainer, status, progress, error=str(e))
            if registered.model is not None:
                e.args = (f"{e} Added to {registered.model.parent} as {registered.model.name}.",)
            raise
        registered = _register(host, trainer, DONE, progress)
    return {
        "output": str(result.output) if result.output else None,
        "steps": result.steps,
        "final_loss": result.losses[-1] if result.losses else None,
        "state_dir": str(result.state_dir) if result.state_dir else None,
        "samples": [str(p) for p in result.samples],
        "config": str(config_path),
        "registered": str(registered.model) if registered.model else None,
        "registered_files": [str(p) for p in registered.files],
        "prompt": f"<lora:{registered.model.stem}:{PREFERRED_WEIGHT}>" if registered.model and config.is_lora else None,
    }


def _register(host: Any, trainer: Trainer, status: Status, progress: Progress, error: str = "") -> Registered:
    """Register the run's last save; a failure here is reported, never raised over the run's own outcome."""
    saved = trainer.last_good_save
    if saved is None or not Path(saved).is_file():
        return Registered()
    try:
        registered = register_run(
            host,
            summarize(trainer, status, error),
            Path(saved),
            samples=list(trainer.samples),
            intermediates=[p for p in trainer.saves if p != saved and Path(p).is_file()],
        )
    except Exception as e:  # the model is saved in the output folder either way
        logger.exception("SD-Train: could not register %s", saved)
        progress.message(f"Could not add {Path(saved).name} to the host's folder: {e}")
        return Registered()
    progress.message(f"Added {registered.model} ({len(registered.files)} files)")
    return registered
