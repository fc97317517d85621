"""`sdtrain <command> ...` / `python -m lib_sdtrain <command> ...`: the entry point, with every command: the app's
own (ui, demo) and the pipeline's stages (lib_sdtrain/cli.py). It sits above the UI, so that the command line
below it (which the job runner reuses) never reaches up to the UI."""

from __future__ import annotations

from collections.abc import Sequence

from lib_sdtrain.cli import STAGE_COMMANDS, build_parser, run

APP_COMMANDS = ["lib_sdtrain.ui.cli:register_cli", "lib_sdtrain.demo.cli:register_cli"]


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(commands=[*APP_COMMANDS, *STAGE_COMMANDS]), argv)
