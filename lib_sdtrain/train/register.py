"""Putting a trained model where the host uses it: a LoRA into the Lora folder (with a card preview and the WebUI's
user metadata: description, activation text, preferred weight), a full fine-tune into the checkpoint folder, then
the host's lists refreshed. Runs after every UI/API training run that saved something: done, cancelled or failed.

Naming, never destroying a file that is not ours: the model goes in as `<output_name>.safetensors`. When a model
file of that name is already there (.safetensors, .ckpt or .pt) and is not an earlier SD-Train output of the same
output_name (its header's `sdtrain_output_name`), the next free `<output_name>-1`, `-2`, ... is used instead; an
earlier output of this run name is replaced, so retraining updates the card. Every file is written under a
temporary name and renamed into place; the model is hard-linked when the output folder is on the same disk.
Intermediate saves follow only with the setting `sdtrain_copy_intermediate`; state folders never do.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lib_sdtrain.errors import SDTrainError
from lib_sdtrain.train.outputs import OWNER_KEY
from lib_sdtrain.utils.files import atomic_path, atomic_write_json, resolve_inside
from lib_sdtrain.utils.status import Status

if TYPE_CHECKING:
    from lib_sdtrain.train.loop import Trainer

DONE, CANCELLED, FAILED = Status.DONE, Status.CANCELLED, Status.FAILED
PREFERRED_WEIGHT = 0.8
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt")
MAX_ERROR_CHARS = 200


@dataclass(frozen=True)
class RunSummary:
    """What the card says about a run; independent of the trainer so it can be built anywhere."""

    name: str
    status: Status
    is_lora: bool
    sd_version: str
    steps: int
    total_steps: int
    epochs: int
    images: int
    base_model: str
    network_dim: int | None = None
    network_alpha: float | None = None
    trigger_word: str = ""
    error: str = ""

    @property
    def stop_note(self) -> str:
        """Empty for a finished run, else what happened (also written as the LoRA's ss_training_comment)."""
        if self.status == CANCELLED:
            return f"cancelled at step {self.steps} of {self.total_steps}"
        if self.status == FAILED:
            error = self.error.strip().splitlines()[0][:MAX_ERROR_CHARS] if self.error.strip() else "an error"
            return f"failed at step {self.steps} of {self.total_steps} ({error}); this is its last save"
        return ""

    def description(self) -> str:
        kind = f"LoRA (dim {self.network_dim}, alpha {self.network_alpha:g})" if self.is_lora else "Fine-tuned model"
        counts = ", ".join(_count(n, what) for n, what in ((self.steps, "step"), (self.epochs, "epoch"),
                                                          (self.images, "image")))  # fmt: skip
        text = f"{kind} trained by SD-Train from {self.base_model}: {counts}."
        note = self.stop_note
        return html.escape(f"{text} {note[0].upper()}{note[1:]}." if note else text, quote=False)


def _count(number: int, what: str) -> str:
    return f"{number} {what}" + ("" if number == 1 else "s")


@dataclass
class Registered:
    model: Path | None = None
    files: list[Path] = field(default_factory=list)


def summarize(trainer: Trainer, status: Status, error: str = "") -> RunSummary:
    config, model = trainer.config, trainer.model
    position = getattr(trainer, "position", None)  # absent when setup failed
    base = model.source_name or (Path(model.source).name if model.source else "an unnamed model")
    if model.source_sha256:
        base += f" [{model.source_sha256[:10]}]"
    return RunSummary(
        name=config.output_name,
        status=status,
        is_lora=config.is_lora,
        sd_version=model.version,
        steps=position.step if position else 0,
        total_steps=getattr(trainer, "total_steps", 0),
        epochs=position.epochs_reached if position else 0,
        images=len({item.key for item in trainer.items}),  # items repeat each image dataset_repeats times
        base_model=base,
        network_dim=config.network_dim if config.is_lora else None,
        network_alpha=config.network_alpha if config.is_lora else None,
        trigger_word=config.trigger_word,
        error=error,
    )


def register_run(
    host: Any,
    summary: RunSummary,
    model_file: Path,
    samples: list[Path] | None = None,
    intermediates: list[Path] | None = None,
) -> Registered:
    """Copy a run's model (and, with the setting, its intermediate saves) into the host's Lora or checkpoint
    folder with a preview and the user metadata, then refresh the host's lists (setting
    sdtrain_refresh_after_training)."""
    folder = target_folder(host, summary.is_lora)
    stem = free_stem(folder, summary.name, summary.name)
    target = folder / f"{stem}.safetensors"
    failed_lora = summary.is_lora and summary.status == FAILED
    place_model(model_file, target, {"ss_training_comment": summary.stop_note} if failed_lora else None)
    registered = Registered(model=target, files=[target])
    if samples:
        preview = folder / f"{stem}.preview.png"
        _copy(samples[-1], preview)
        registered.files.append(preview)
    registered.files.append(write_user_metadata(folder / f"{stem}.json", summary))
    if intermediates and host.option("sdtrain_copy_intermediate"):
        for path in intermediates:
            suffix = path.stem[len(summary.name) :] if path.stem.startswith(summary.name) else f"-{path.stem}"
            extra = folder / f"{free_stem(folder, stem + suffix, summary.name)}.safetensors"
            place_model(path, extra)
            registered.files.append(extra)
    if host.option("sdtrain_refresh_after_training"):
        if summary.is_lora:
            host.refresh_loras()
        else:
            host.refresh_checkpoints()
    return registered


def target_folder(host: Any, is_lora: bool) -> Path:
    """The Lora folder (plus the setting sdtrain_lora_subfolder, which must stay inside it) or the checkpoints."""
    if not is_lora:
        return Path(host.checkpoints_dir())
    subfolder = str(host.option("sdtrain_lora_subfolder") or "").strip()
    try:
        return resolve_inside(host.lora_dir(), subfolder) if subfolder else Path(host.lora_dir())
    except ValueError:
        raise SDTrainError(
            f"The setting 'Subfolder of the Lora folder' ({subfolder}) points outside the Lora folder; "
            "use a folder name such as sd-train."
        ) from None


def free_stem(folder: Path, stem: str, owner: str) -> str:
    """`stem`, or `stem-1`, `stem-2`, ...: the first name with no model file, or only an earlier output of
    `owner` (the run's output_name) in .safetensors."""
    for number in range(1000):
        candidate = f"{stem}-{number}" if number else stem
        taken = [p for p in (folder / f"{candidate}{suffix}" for suffix in MODEL_SUFFIXES) if p.exists()]
        if not taken or (taken == [folder / f"{candidate}.safetensors"] and output_owner(taken[0]) == owner):
            return candidate
    raise SDTrainError(f"No free file name for {stem} in {folder}; tidy the folder up.")


def output_owner(path: Path) -> str | None:
    """The output_name SD-Train wrote into a safetensors header, or None (not ours, or unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get(OWNER_KEY)
    except Exception:
        return None


def place_model(source: Path, target: Path, metadata_changes: dict[str, str] | None = None) -> Path:
    """Put `source` at `target` in one rename: hard-linked (no second copy of a large checkpoint) or copied; with
    `metadata_changes`, rewritten with those header entries (and the kohya hashes they change)."""
    with atomic_path(target) as tmp:
        if metadata_changes:
            _rewrite_with_metadata(source, tmp, metadata_changes)
        else:
            tmp.unlink()
            try:
                os.link(source, tmp)
            except OSError:  # another disk, or a file system without hard links
                shutil.copyfile(source, tmp)
    return target


def _rewrite_with_metadata(source: Path, target: Path, changes: dict[str, str]) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from lib_sdtrain.network.kohya_file import model_hashes

    with safe_open(str(source), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
    metadata.pop("ss_training_finished_at", None)
    metadata.update(changes)
    metadata["sshs_model_hash"], metadata["sshs_legacy_hash"] = model_hashes(tensors, metadata)
    save_file(tensors, str(target), metadata=metadata)


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def write_user_metadata(path: Path, summary: RunSummary) -> Path:
    """The WebUI's user metadata for a card (extensions-builtin/Lora/ui_edit_user_metadata.py reads these keys; a
    checkpoint's card only the description and notes). What the user edited in an earlier version's file (weight,
    negative text, notes) is kept."""
    previous: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads(path.read_text(encoding="utf-8"))
        previous = loaded if isinstance(loaded, dict) else {}
    defaults: dict[str, Any] = {"notes": ""}
    ours: dict[str, Any] = {"description": summary.description(), "sd version": summary.sd_version.upper()}
    if summary.is_lora:
        defaults.update({"preferred weight": PREFERRED_WEIGHT, "negative text": ""})
        ours["activation text"] = summary.trigger_word
    atomic_write_json(path, {**defaults, **previous, **ours})
    return path
