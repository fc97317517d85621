"""Training state for resuming: trainable weights, optimizer, LR schedule, position in the data, random generators.

A state folder (kohya's naming: `<name>-000003-state`, `<name>-step00000500-state`) holds no pickles, so it loads
anywhere, the WebUI (whose torch.load checker rejects torch's own files) included:
    trainable.safetensors   the trained tensors (the LoRA in kohya's names, or the fine-tuned modules)
    optimizer.safetensors   the optimizer's state dict: its tensors, with the rest of the dict (param ids, groups,
                            numbers) as JSON in the file's metadata
    scheduler.safetensors   the LR scheduler's state dict, the same way
    rng.safetensors         the CPU's, the CUDA device's (when present), the run's, Python's and NumPy's generators
    scaler.safetensors      fp16 only: the GradScaler's scale and growth tracker
    train_state.json        step, epoch, batch position; written last, so a folder holding it is complete
States written by SD-Train before this format (optimizer.pt, ...) are read with the weights-only unpickler.

A save writes `<name>.tmp` and renames it into place (the previous state moves to `<name>.old` meanwhile). A crash
between the two renames leaves no `<name>`: the next load or save puts the newest complete copy back first.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from lib_sdtrain.errors import SDTrainError
from lib_sdtrain.utils.files import atomic_write_json
from lib_sdtrain.utils.torch_pickle import load_pickle

logger = logging.getLogger("sdtrain")

COMPLETE_MARKER = "train_state.json"
PARTS = ("optimizer", "scheduler", "rng")
"""The parts every state has besides trainable.safetensors and train_state.json (scaler: fp16 runs only)."""
TREE_KEY = "sdtrain_tree"


@dataclass
class Position:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch being trained (0-based)
    batch: int = 0  # batches of that epoch already consumed

    @property
    def epochs_reached(self) -> int:
        """The epochs trained in, one cut short included: kohya's 1-based epoch number of a save (ss_epoch)."""
        return self.epoch + (1 if self.batch else 0)


@dataclass
class LoadedState:
    trainable: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    rng: dict[str, Any]
    scaler: dict | None
    position: Position
    folder: Path
    note: str = ""
    """Set when the state was put back from a save that a crash interrupted."""


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
    recover_state(folder)  # a complete copy left by a crash becomes the state again before anything is removed
    tmp, old = _sibling(folder, "tmp"), _sibling(folder, "old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        save_tree(tmp / "optimizer.safetensors", optimizer.state_dict())
        save_tree(tmp / "scheduler.safetensors", lr_scheduler.state_dict())
        save_tree(tmp / "rng.safetensors", rng_state(generators))
        if scaler_state is not None:
            save_tree(tmp / "scaler.safetensors", scaler_state)
        atomic_write_json(tmp / COMPLETE_MARKER, asdict(position))  # last: the folder is complete from here on
    except BaseException:  # a full disk: leave no half-written state taking the room a rescue needs
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        tmp.rename(folder)  # a crash just before this leaves .old and .tmp, both complete: recover_state
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(folder)
    return folder


def recover_state(folder: str | Path) -> str:
    """Put back a state whose save was cut between its two renames (only `<name>.tmp` and `<name>.old` are left):
    the newer complete copy becomes `<name>` again. Returns what was done, for the log; "" when nothing was."""
    folder = Path(folder)
    if is_complete(folder):
        return ""
    for suffix, what in (("tmp", "the newer save, which a crash interrupted"), ("old", "the previous save")):
        candidate = _sibling(folder, suffix)
        if is_complete(candidate):
            if folder.exists():  # an incomplete folder of that name: never complete, nothing in it to keep
                shutil.rmtree(folder)
            candidate.rename(folder)
            note = f"Put back {folder.name} from {candidate.name} ({what})."
            logger.warning("SD-Train: %s", note)
            return note
    return ""


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file() and (folder / "trainable.safetensors").is_file()


def state_exists(folder: str | Path) -> bool:
    """A state folder, or a complete copy of it that a crash left under `.tmp`/`.old` (load_state recovers it)."""
    folder = Path(folder)
    return folder.is_dir() or any(is_complete(_sibling(folder, s)) for s in ("tmp", "old"))


def _sibling(folder: Path, suffix: str) -> Path:
    return folder.with_name(f"{folder.name}.{suffix}")


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """The random states a resume needs: the CPU's, the current CUDA device's when there is one (LoRA dropout on
    a GPU draws from it), the run's own generators, and Python's and NumPy's (which libraries may draw from)."""
    rng: dict[str, Any] = {"torch": torch.get_rng_state(), **{f"gen_{k}": g.get_state() for k, g in generators.items()}}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    rng["python"] = random.getstate()
    kind, keys, pos, has_gauss, gauss = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    rng["numpy"] = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)
    return rng


def restore_rng(rng: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Put back what rng_state saved; a state without CUDA's, Python's or NumPy's (written on a CPU, or by an older
    version) leaves those as they are."""
    torch.set_rng_state(rng["torch"])
    for name, generator in generators.items():
        generator.set_state(rng[f"gen_{name}"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    if "python" in rng:
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in rng:
        kind, keys, pos, has_gauss, gauss = rng["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def load_state(folder: str | Path) -> LoadedState:
    """Read a state folder; SDTrainError naming the file and what is wrong with it when it cannot be used."""
    folder = Path(folder)
    note = recover_state(folder)
    if not folder.is_dir():
        leftovers = [p.name for p in (_sibling(folder, "tmp"), _sibling(folder, "old")) if p.exists()]
        found = f" (only {' and '.join(leftovers)}, incomplete: a save that was cut short)" if leftovers else ""
        raise SDTrainError(f"Cannot resume: the state folder {folder} does not exist{found}.")
    missing = [name for name in ("trainable.safetensors", COMPLETE_MARKER) if not (folder / name).is_file()]
    missing += [f"{part}.safetensors" for part in PARTS if _part_file(folder, part) is None]
    if missing:
        raise SDTrainError(
            f"Cannot resume from {folder}: it is not a complete SD-Train state ({', '.join(missing)} missing). "
            "Choose another state, or start over."
        )
    scaler_file = _part_file(folder, "scaler")
    return LoadedState(
        trainable=_read(folder / "trainable.safetensors", load_file),
        optimizer=_read_part(folder, "optimizer"),
        scheduler=_read_part(folder, "scheduler"),
        rng=_read_part(folder, "rng"),
        scaler=_read(scaler_file, _load_any) if scaler_file else None,
        position=_read(folder / COMPLETE_MARKER, _read_position),
        folder=folder,
        note=note,
    )


def _part_file(folder: Path, part: str) -> Path | None:
    """The part's file: this format's .safetensors, else an older state's .pt."""
    return next((p for p in (folder / f"{part}.safetensors", folder / f"{part}.pt") if p.is_file()), None)


def _read_part(folder: Path, part: str) -> Any:
    path = _part_file(folder, part)
    assert path is not None  # checked by load_state
    return _read(path, _load_any)


def _load_any(path: Path) -> Any:
    return load_tree(path) if path.suffix == ".safetensors" else load_pickle(path)


def _read(path: Path, reader) -> Any:
    try:
        return reader(path)
    except SDTrainError as e:
        raise SDTrainError(f"Cannot resume from {path.parent}: {e}") from None
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise SDTrainError(
            f"Cannot resume from {path.parent}: {path.name} cannot be read ({type(e).__name__}: {str(e)[:200]}). "
            "The state is damaged: choose another one, or start over."
        ) from None


def _read_position(path: Path) -> Position:
    values = json.loads(path.read_text(encoding="utf-8"))
    names = [f.name for f in fields(Position)]
    if not isinstance(values, dict) or any(not isinstance(values.get(n), int) or values[n] < 0 for n in names):
        raise ValueError(f"expected {', '.join(names)} as counts")
    return Position(**{n: values[n] for n in names})


# --- state dicts as safetensors + JSON -----------------------------------------------------------------------------


def save_tree(path: Path, tree: Any) -> None:
    """A state dict (nested dicts, lists, tuples, numbers, strings, tensors) as one safetensors file: the tensors
    as its tensors, the structure as JSON in its metadata. Int keys and tuples come back as they went in."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(tree, tensors)
    if not tensors:  # safetensors 0.4.2 (the WebUI's) writes a broken header for metadata without tensors
        tensors["unused"] = torch.zeros(1)
    save_file(tensors, str(path), metadata={TREE_KEY: json.dumps(structure)})


def load_tree(path: Path) -> Any:
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
        if TREE_KEY not in metadata:
            raise ValueError("not an SD-Train state file (no structure in its metadata)")
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    return _decode(json.loads(metadata[TREE_KEY]), tensors)


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().cpu().contiguous()
        return {"tensor": name}
    if isinstance(value, dict):
        return {"dict": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"a state holds a {type(value).__name__}, which SD-Train cannot save without pickling")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "tensor" in value:
        return tensors[value["tensor"]]
    if "tuple" in value:
        return tuple(_decode(v, tensors) for v in value["tuple"])
    return {_decode(k, tensors): _decode(v, tensors) for k, v in value["dict"]}
