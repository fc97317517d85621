"""Finding models on disk for the UI's choices: SD checkpoints and diffusers folders, BLIP folders, WD14 taggers,
LoRA files. Only names and small JSON files are read, never weights."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
MAX_DEPTH = 4  # model folders are shallow; a deep walk of a big models folder would slow every page load


def _walk(root: Path, depth: int = 0) -> Iterable[Path]:
    if depth > MAX_DEPTH or not root.is_dir():
        return
    try:
        children = sorted(root.iterdir())
    except OSError:
        return
    for child in children:
        if child.name.startswith("."):
            continue
        yield child
        if child.is_dir() and not _is_model_folder(child):
            yield from _walk(child, depth + 1)


def _is_model_folder(folder: Path) -> bool:
    """A diffusers or transformers model folder: listed as one model, never searched for checkpoint files (a BLIP
    folder's model.safetensors is not an SD checkpoint)."""
    return (folder / "model_index.json").is_file() or (folder / "config.json").is_file()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def sd_models(roots: Iterable[Path]) -> list[Path]:
    """Single-file checkpoints (not LoRAs) and diffusers model folders under `roots`."""
    found = []
    for root in roots:
        for path in _walk(Path(root)):
            is_folder_model = path.is_dir() and (path / "model_index.json").is_file()
            is_checkpoint = path.is_file() and path.suffix.lower() in CHECKPOINT_SUFFIXES and not is_lora_file(path)
            if is_folder_model or is_checkpoint:
                found.append(path)
    return found


def blip_models(roots: Iterable[Path]) -> list[Path]:
    return [
        p
        for root in roots
        for p in _walk(Path(root))
        if p.is_dir() and "blip" in str(_read_json(p / "config.json").get("model_type", "")).lower()
    ]


def taggers(roots: Iterable[Path]) -> list[Path]:
    return [
        p
        for root in roots
        for p in _walk(Path(root))
        if p.is_dir() and (p / "model.onnx").is_file() and (p / "selected_tags.csv").is_file()
    ]


def is_lora_file(path: Path) -> bool:
    """A .safetensors file whose tensors are kohya LoRA tensors (reads the header only)."""
    if path.suffix.lower() != ".safetensors":
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return any(key.startswith(("lora_unet_", "lora_te")) for key in f.keys())  # noqa: SIM118 (not a dict)
    except Exception:
        return False


def lora_files(roots: Iterable[Path]) -> list[Path]:
    """LoRA files under `roots`, newest first (what a user just trained comes first)."""
    found = {
        p.resolve(): p
        for root in roots
        for p in _walk(Path(root))
        if p.is_file() and not p.parent.name.endswith("-state") and is_lora_file(p)  # a state is not a LoRA to use
    }
    return sorted(found.values(), key=lambda p: p.stat().st_mtime, reverse=True)
