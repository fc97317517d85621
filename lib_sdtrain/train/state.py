"""Training state for resuming: trainable weights, optimizer, LR schedule, position in the data, random generators.

A state folder (kohya's naming: `<name>-000003-state`, `<name>-step00000500-state`) holds:
    trainable.safetensors   the trained tensors (the LoRA in kohya's names, or the fine-tuned modules)
    optimizer.pt, scheduler.pt, rng.pt   torch state dicts (tensors and numbers only: read with weights_only);
                            rng.pt: the CPU's, the CUDA device's (when present) and the run's generators
    scaler.pt               fp16 only: the GradScaler's scale and growth tracker
    train_state.json        step, epoch, batch position
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lib_sdtrain.errors import SDTrainError
from lib_sdtrain.utils.files import atomic_write_json


@dataclass
class Position:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch being trained (0-based)
    batch: int = 0  # batches of that epoch already consumed


def save_state(
    folder: Path,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    lr_scheduler,
    position: Position,
    generators: dict[str, torch.Generator],
    scaler_state: dict | None = None,
) -> Path:
    """Write the state into a temporary sibling folder and rename it into place, so a crash leaves either the old
    state or the new one, never a mix."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(lr_scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(generators), tmp / "rng.pt")
        if scaler_state is not None:
            torch.save(scaler_state, tmp / "scaler.pt")
        atomic_write_json(tmp / "train_state.json", asdict(position))
    except BaseException:  # a full disk: leave no half-written state taking the room a rescue needs
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(folder)
    return folder


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    """The random states a resume needs: the CPU's, the current CUDA device's when there is one (LoRA dropout on
    a GPU draws from it), and the run's own generators."""
    rng = {"torch": torch.get_rng_state(), **{f"gen_{k}": g.get_state() for k, g in generators.items()}}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    return rng


def restore_rng(rng: dict[str, torch.Tensor], generators: dict[str, torch.Generator]) -> None:
    """Put back what rng_state saved; a state written without CUDA (or by an older version) leaves CUDA's as is."""
    torch.set_rng_state(rng["torch"])
    for name, generator in generators.items():
        generator.set_state(rng[f"gen_{name}"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


def load_state(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict, dict, dict, Position]:
    folder = Path(folder)
    needed = ["trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "train_state.json"]
    missing = [n for n in needed if not (folder / n).is_file()]
    if missing:
        raise SDTrainError(
            f"Cannot resume from {folder}: it is not a complete SD-Train state ({', '.join(missing)} missing)."
        )
    trainable = load_file(str(folder / "trainable.safetensors"))
    optimizer = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
    scheduler = torch.load(folder / "scheduler.pt", map_location="cpu", weights_only=True)
    rng = torch.load(folder / "rng.pt", map_location="cpu", weights_only=True)
    position = Position(**json.loads((folder / "train_state.json").read_text(encoding="utf-8")))
    return trainable, optimizer, scheduler, rng, position


def load_scaler_state(folder: str | Path) -> dict | None:
    """The fp16 GradScaler's state, None when the state was saved without one (the scaler then finds its scale
    again within a few steps)."""
    path = Path(folder) / "scaler.pt"
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
