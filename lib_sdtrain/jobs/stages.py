"""The stages a job can run, with the options the CLI takes for them (kohya's names), checked before a job starts.

caption, tag, merge, buckets and report take the options of `sdtrain <kind>` and go through the CLI's own parser
and handler, so the UI, the API and the CLI cannot drift apart. prepare is merge then buckets; train takes the
TOML keys (and `config_file`). `check(options)` raises InputError naming the field at fault, or returns the work.
"""

from __future__ import annotations

import argparse
import difflib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib_sdtrain.errors import ConfigError, DatasetError, InputError
from lib_sdtrain.host.types import LOADED_CHECKPOINT
from lib_sdtrain.jobs import access
from lib_sdtrain.utils.path_kinds import MAX_TEXT_LENGTH, argument_kinds, is_hub_id
from lib_sdtrain.utils.progress import Progress

Work = Callable[[Progress], dict[str, Any]]
"""What a stage's check returns. It may carry `claim()`, which the runner calls when it queues the job (a training
job's output: refused then if another run holds it) and which returns the function that gives it back when the job
ends. A check alone (the UI's Check button) claims nothing."""


@dataclass(frozen=True)
class Stage:
    kind: str
    title: str
    uses_gpu: bool
    check: Callable[[dict[str, Any]], Work]
    unloads_model: bool = False
    """Moves the WebUI's model off the GPU while it runs (training needs the VRAM; captioning does not)."""


# --- the CLI's options ---------------------------------------------------------------------------------------------


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would exit the server
        raise ConfigError(message)


@functools.cache
def _subparser(command: str) -> argparse.ArgumentParser:
    from lib_sdtrain.cli import build_parser

    parser = build_parser(_RaisingParser)
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[command]


def cli_options(command: str) -> dict[str, argparse.Action]:
    """{option name: argparse action} of `sdtrain <command>`: what the API accepts for that kind."""
    actions: dict[str, argparse.Action] = {}
    for action in _subparser(command)._actions:
        if action.dest not in ("help", "handler"):
            actions.setdefault(action.dest, action)  # the first spelling (kohya's old ones come later)
    return actions


def parse_cli_options(command: str, options: dict[str, Any]) -> argparse.Namespace:
    """Options as `sdtrain <command>` would take them, parsed by its own parser (types, choices, defaults).
    Values are passed as `--name=value` and positionals after `--`, so a value that starts with a dash is a value,
    never an option of the parser (`--help` would print to the server's console)."""
    actions = cli_options(command)
    positionals: list[str] = []
    for name in [n for n, a in actions.items() if not a.option_strings]:  # in order
        value = options.get(name)
        if value in (None, ""):
            if actions[name].nargs == "?":
                break  # an optional positional: it and the ones after it take their defaults
            raise InputError(name, f"{name} is required.")
        positionals.append(_text(name, value))
    argv: list[str] = []
    for name, value in options.items():
        action = actions.get(name)
        if action is None:
            close = difflib.get_close_matches(name, list(actions), n=1)
            raise InputError(
                name, f"Unknown option {name!r} for {command}." + (f" Did you mean {close[0]!r}?" if close else "")
            )
        if not action.option_strings or value is None:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            argv += [action.option_strings[0]] if _truthy(value) else []
        else:
            argv.append(f"{action.option_strings[0]}={_text(name, value)}")
    try:
        return _subparser(command).parse_args([*argv, "--", *positionals])
    except ConfigError as e:
        raise InputError(access.field_in(str(e), actions), f"{command}: {e}") from None


def _text(name: str, value: Any) -> str:
    if isinstance(value, list | tuple | dict):
        raise InputError(name, f"{name}: expected one value (text or a number), not a list.")
    text = str(value)
    if len(text) > MAX_TEXT_LENGTH:
        raise InputError(name, f"{name} is {len(text)} characters long; at most {MAX_TEXT_LENGTH} are allowed.")
    return text


def _truthy(value: Any) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on") if isinstance(value, str) else bool(value)


# --- checks shared by every stage ------------------------------------------------------------------------------------


def check_image_folder(name: str, folder: Any, recursive: bool = False) -> Path:
    from lib_sdtrain.dataset.images import list_images

    if not folder:
        raise InputError(name, "Choose a dataset folder.")
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise InputError(name, f"The folder {path} does not exist.")
    if not list_images(path, recursive) and not any(p.is_dir() for p in path.iterdir()):
        raise InputError(name, f"There are no images in {path} (png, jpg, jpeg, webp, bmp).")
    return path


def check_model_source(name: str, source: Any) -> None:
    if not source:
        raise InputError(name, "Choose a base model.")
    value = str(source)
    if value == LOADED_CHECKPOINT or is_hub_id(value):
        return  # the loaded checkpoint, or a hub id (the loader says if it cannot be had)
    if not Path(value).expanduser().exists():
        raise InputError(name, f"The model {value} does not exist.")


# --- the stages ------------------------------------------------------------------------------------------------------


def _cli_stage(command: str) -> Callable[[dict[str, Any]], Work]:
    def check(options: dict[str, Any]) -> Work:
        args = parse_cli_options(command, options)
        check_cli_paths(command, args)
        if command == "buckets":
            check_model_source("model", args.model)
        return lambda progress: args.handler(args, progress)

    return check


def check_cli_paths(command: str, args: argparse.Namespace) -> None:
    """Every path option of the command, then the images it will open, through the one access check."""
    access.check_values(vars(args), argument_kinds(_subparser(command)))
    if hasattr(args, "train_data_dir"):
        recursive = getattr(args, "recursive", False)
        folder = check_image_folder("train_data_dir", args.train_data_dir, recursive)
        access.check_image_folder_files("train_data_dir", folder, recursive)


def _check_prepare(options: dict[str, Any]) -> Work:
    """merge (captions + tags -> meta_clean.json) then buckets (-> meta_lat.json + latents), in one job."""
    options = dict(options)
    access.check_values(options, {**argument_kinds(_subparser("merge")), **argument_kinds(_subparser("buckets"))})
    folder = check_image_folder("train_data_dir", options.get("train_data_dir"), bool(options.get("recursive")))
    clean = options.pop("out_json", None) or str(folder / "meta_clean.json")
    latents = options.pop("latents_json", None) or str(folder / "meta_lat.json")
    merge_keys = set(cli_options("merge"))
    merge_options = {k: v for k, v in options.items() if k in merge_keys and k != "in_json"}
    merge_options.update(out_json=clean)
    bucket_options = {k: v for k, v in options.items() if k not in ("clean_caption", "tag_extension", "debug")}
    bucket_options.update(in_json=clean, out_json=latents)
    merge_args = parse_cli_options("merge", merge_options)
    check_cli_paths("merge", merge_args)
    check_model_source("model", options.get("model"))
    bucket_args = parse_cli_options("buckets", bucket_options)
    check_cli_paths("buckets", bucket_args)

    def work(progress: Progress) -> dict[str, Any]:
        merged = merge_args.handler(merge_args, progress)
        progress.check_cancelled()
        bucket_args.model = _vae_source(bucket_args.model)
        return {"merge": merged, **bucket_args.handler(bucket_args, progress)}

    return work


def _vae_source(model: str) -> Any:
    """The VAE for latents: in the WebUI the loaded checkpoint's file; else the model as given."""
    if model != LOADED_CHECKPOINT:
        return model
    from lib_sdtrain import host

    checkpoint = host.current().loaded_checkpoint()
    if checkpoint is None:
        raise InputError("model", "No checkpoint is loaded in the WebUI; choose a model file.")
    return str(checkpoint.path)


def _check_train(options: dict[str, Any]) -> Work:
    from lib_sdtrain import host

    options = {k: v for k, v in options.items() if v is not None and v != ""}
    config_file = options.pop("config_file", None)
    config = access.load_train_config(config_file, options, str(host.current().output_dir()))
    check_model_source("pretrained_model_name_or_path", config.pretrained_model_name_or_path)
    if config.pretrained_model_name_or_path == LOADED_CHECKPOINT:  # none loaded, --medvram, SDXL: say so now
        problem = host.current().loaded_model_problem()
        if problem:
            raise InputError("pretrained_model_name_or_path", problem)
    if config.dataset_config:
        if not Path(config.dataset_config).is_file():
            raise InputError("dataset_config", f"The dataset config {config.dataset_config} does not exist.")
    elif not config.in_json:
        check_image_folder("train_data_dir", config.train_data_dir, recursive=True)
    elif not Path(config.in_json).is_file():
        raise InputError("in_json", f"The metadata file {config.in_json} does not exist; run Prepare first.")
    else:
        from lib_sdtrain.dataset.metadata import load_metadata

        try:  # its shape now, not after the model loaded
            load_metadata(config.in_json)
        except DatasetError as e:
            raise InputError("in_json", str(e)) from None
    from lib_sdtrain.train.state import state_exists

    if config.resume and not state_exists(config.resume):
        raise InputError("resume", f"The state folder {config.resume} does not exist.")
    try:
        access.check_train_config(config)
    except InputError:
        raise
    except ConfigError as e:  # the dataset itself (its metadata, its images) cannot be read
        raise InputError(access.field_in(str(e), options), str(e)) from None
    if config.sample_prompts:  # read now: a bad prompt file fails the form, not the run after the model loaded
        from lib_sdtrain.train.sampling import check_samplers, read_prompt_file

        try:
            check_samplers(read_prompt_file(config.sample_prompts), config.sample_sampler)
        except ConfigError as e:
            raise InputError("sample_prompts", str(e)) from None

    from lib_sdtrain.train.output_lock import OutputBusyError, check_output_free, claim_output

    def claim() -> Callable[[], None]:
        try:
            return claim_output(config.output_dir, config.output_name, "an SD-Train training job").release
        except OutputBusyError as e:
            raise InputError("output_name", str(e)) from None

    try:
        check_output_free(config.output_dir, config.output_name)
    except OutputBusyError as e:
        raise InputError("output_name", str(e)) from None

    def work(progress: Progress) -> dict[str, Any]:
        from lib_sdtrain.train.run import run_training

        return run_training(config, progress)

    work.claim = claim  # type: ignore[attr-defined]
    return work


STAGES: dict[str, Stage] = {
    stage.kind: stage
    for stage in (
        Stage("caption", "Captioning (BLIP)", True, _cli_stage("caption")),
        Stage("tag", "Tagging (WD14)", True, _cli_stage("tag")),
        Stage("merge", "Merging captions and tags", False, _cli_stage("merge")),
        Stage("buckets", "Buckets and latents", True, _cli_stage("buckets")),
        Stage("report", "Dataset report", False, _cli_stage("report")),
        Stage("prepare", "Preparing the dataset", True, _check_prepare),
        Stage("train", "Training", True, _check_train, unloads_model=True),
    )
}
