"""`sdtrain train --config_file lora.toml [--any_kohya_option value ...]`."""

from __future__ import annotations

import argparse
import contextlib
import signal
import textwrap
from typing import Any

from lib_sdtrain.errors import ConfigError
from lib_sdtrain.train.kohya_keys import ACCEPTED_OUTSIDE_SCHEMA
from lib_sdtrain.train.options import CATEGORIES, Option, coerce_value, display_value, options_in
from lib_sdtrain.utils.path_kinds import PathKind, add_argument


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps help text at spaces only, so 'fine-tune' or 'lora.toml' never break across lines."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a LoRA or fine-tune a model",
        usage="%(prog)s [-h] [--config_file CONFIG_FILE] [--<key> VALUE ...]",
        description="Train from a kohya-style TOML config; any of its keys can also be given as --key value "
        "(the command line wins). network_module = 'networks.lora' trains a LoRA, none a full fine-tune. "
        "The option groups below are the config's TOML tables.",
        formatter_class=_HelpFormatter,
    )
    add_argument(
        parser, "--config_file", kind=PathKind.READ_FILE, help="TOML file with kohya's keys (tables are flattened)"
    )
    for category, (title, table) in CATEGORIES.items():
        group = parser.add_argument_group(f"{title} [{table}]")
        for option in options_in(category):
            _add_option(group, option)
    unused = parser.add_argument_group(
        "kohya options accepted but not used",
        "Accepted so kohya command lines run unchanged, and reported as unused at the start, as in a TOML: "
        + ", ".join(f"--{key}" for key in sorted(ACCEPTED_OUTSIDE_SCHEMA)),
    )
    for key in sorted(ACCEPTED_OUTSIDE_SCHEMA):
        add_argument(unused, f"--{key}", kind=PathKind.TEXT, nargs="*", default=None, help=argparse.SUPPRESS)
    parser.set_defaults(handler=run_train)


def _add_option(group: argparse._ArgumentGroup, option: Option) -> None:
    # default=None: only the flags given on the command line override the config file.
    kwargs: dict[str, Any] = {"default": None, "type": _argument_type(option), "help": _help_text(option)}
    if option.type is bool:
        kwargs.update(nargs="?", const=True, metavar="true|false")  # --flag alone means true
    elif option.type is list:
        kwargs.update(nargs="*", type=str, metavar="VALUE")
    elif option.choices:
        kwargs["metavar"] = "{" + ",".join(str(c) for c in option.choices) + "}"
    else:
        kwargs["metavar"] = option.type.__name__.upper()
    add_argument(group, f"--{option.name}", kind=option.kind or PathKind.TEXT, **kwargs)


def _help_text(option: Option) -> str:
    text = option.help
    if option.default is not None and option.default != "":
        text += f" (default: {display_value(option.default)})"
    return text.replace("%", "%%")  # argparse formats help with %


def _argument_type(option: Option):
    """The TOML reader's type check, so a flag and a config key accept the same values with the same messages."""

    def parse(text: str) -> Any:
        try:
            return coerce_value(option, text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = option.type.__name__
    return parse


def _scalar(text: str) -> Any:
    """A flag's text as the TOML would hold it: true/false, a number, else the text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def unused_flag_value(values: list[str] | None) -> Any:
    """The value of an accepted-but-unused kohya flag: --xformers alone is true, one value a scalar, more a list."""
    if values is None or not values:
        return None if values is None else True
    return _scalar(values[0]) if len(values) == 1 else list(values)


def command_line_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags (None: not given, the config file decides)."""
    overrides = {k: v for k, v in vars(args).items() if k not in ("config_file", "handler", "command")}
    for key in ACCEPTED_OUTSIDE_SCHEMA & overrides.keys():
        overrides[key] = unused_flag_value(overrides[key])
    return overrides


def run_train(args: argparse.Namespace) -> int:
    from lib_sdtrain.train.loop import train
    from lib_sdtrain.train.settings import load_config
    from lib_sdtrain.utils.progress import TqdmProgress

    config = load_config(args.config_file, command_line_overrides(args))
    progress = TqdmProgress()
    with _ctrl_c_cancels(progress):
        result = train(config, progress=progress, run="`sdtrain train`")
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
