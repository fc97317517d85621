"""`sdtrain train --config_file lora.toml [--any_kohya_option value ...]`."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import types
import typing

from lib_sdtrain.train.config import TrainConfig


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a LoRA or fine-tune a model",
        description="Train from a kohya-style TOML config; any of its keys can also be given as --key value "
        "(the command line wins). network_module = 'networks.lora' trains a LoRA, none a full fine-tune.",
    )
    parser.add_argument("--config_file", help="TOML file with kohya's keys (tables are flattened)")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "ignored":
            continue
        kind = _base_type(f.type)
        if kind is bool:
            parser.add_argument(f"--{f.name}", action="store_true", default=None)
        else:
            parser.add_argument(f"--{f.name}", type=kind, default=None, metavar=kind.__name__.upper())
    parser.set_defaults(handler=run_train)


def _base_type(annotation) -> type:
    hints = {"str": str, "int": int, "float": float, "bool": bool}
    if isinstance(annotation, str):  # `from __future__ import annotations` leaves strings
        name = annotation.split("|")[0].strip()
        return hints.get(name, str)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def run_train(args: argparse.Namespace) -> int:
    from lib_sdtrain.train.config import load_config
    from lib_sdtrain.train.loop import train
    from lib_sdtrain.utils.progress import TqdmProgress

    overrides = {k: v for k, v in vars(args).items() if k not in ("config_file", "handler", "command")}
    config = load_config(args.config_file, overrides)
    progress = TqdmProgress()
    with _ctrl_c_cancels(progress):
        result = train(config, progress=progress)
    print(f"done: {result.steps} steps, saved {result.output}")
    return 0


@contextlib.contextmanager
def _ctrl_c_cancels(progress):
    """The first Ctrl-C asks the loop to stop after the current step (it saves the LoRA and a resumable state);
    a second one interrupts at once."""

    def on_sigint(signum, frame):
        if progress.cancelled:
            raise KeyboardInterrupt
        progress.message("Stopping after this step (Ctrl-C again to interrupt at once)...")
        progress.cancel()

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
