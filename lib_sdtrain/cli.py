"""The command line of the pipeline's stages (models, dataset, prepare, train), which `sdtrain` offers
(lib_sdtrain/main.py adds the app's own commands, ui and demo) and the job runner parses its options with.

Each stage module contributes its sub-commands through a `register_cli(subparsers)` function listed in
STAGE_COMMANDS; the modules are imported only when the parser is built, so `--help` stays quick and a stage's heavy
imports happen only when that stage runs. A command's handler returns an exit code:
0 done, 1 failed with a message, 2 bad arguments (argparse), 130 cancelled.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from lib_sdtrain import __version__
from lib_sdtrain.errors import Cancelled, SDTrainError
from lib_sdtrain.utils.path_kinds import check_kinds_declared

# "module:function" pairs, in the order the pipeline runs.
STAGE_COMMANDS: list[str] = [
    "lib_sdtrain.models.cli:register_cli",
    "lib_sdtrain.dataset.cli:register_cli",
    "lib_sdtrain.prepare.cli:register_cli",
    "lib_sdtrain.train.cli:register_cli",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


def build_parser(
    parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser, commands: Sequence[str] = STAGE_COMMANDS
) -> argparse.ArgumentParser:
    """The command line of `commands`. The job runner builds it with a parser class that raises instead of
    exiting, so the UI and the API take the very options the CLI takes."""
    parser = parser_class(
        prog="sdtrain",
        description="SD-Train: caption, tag and prepare a dataset, then train a Stable Diffusion LoRA or fine-tune.",
    )
    parser.add_argument("--version", action="version", version=f"SD-Train {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    for entry in commands:
        module_name, func_name = entry.split(":")
        getattr(importlib.import_module(module_name), func_name)(subparsers)
    for command, subparser in subparsers.choices.items():
        check_kinds_declared(subparser, command)  # every text option says whether it is a path
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and run its command's handler; the exit code."""
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        outcome = args.handler(args)  # an exit code, or the stage's result (a dict) when it succeeded
        return outcome if isinstance(outcome, int) else EXIT_OK
    except Cancelled as e:
        print(f"sdtrain: {e}", file=sys.stderr)
        return EXIT_CANCELLED
    except SDTrainError as e:
        print(f"sdtrain: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("sdtrain: interrupted", file=sys.stderr)
        return EXIT_CANCELLED
