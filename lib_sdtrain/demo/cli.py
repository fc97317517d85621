"""`sdtrain demo [--home DIR] [--force]`: write the demo models and images into the standalone folders."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from lib_sdtrain.utils.path_kinds import PathKind, add_argument


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="make tiny demo models and a sample dataset to try the workflow on a CPU",
        description="Write tiny random-weight models (SD, BLIP, WD14) and a dozen drawn images into SD-Train's "
        "folders, so that caption -> tag -> prepare -> train runs in minutes without downloading anything. "
        "The models draw noise, not pictures: they are for trying the workflow only.",
    )
    add_argument(
        parser,
        "--home",
        kind=PathKind.WRITE_FOLDER,
        type=Path,
        help="SD-Train's home folder (default: $SDTRAIN_HOME or ./sd-train)",
    )
    parser.add_argument("--force", action="store_true", help="make everything again, replacing what is there")
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from lib_sdtrain.demo.make import make_demo
    from lib_sdtrain.host import standalone
    from lib_sdtrain.utils.progress import TqdmProgress

    if args.home:
        standalone.configure(home=args.home)
    paths = make_demo(standalone.models_dir(), standalone.dataset_dir(), force=args.force, progress=TqdmProgress())
    print(f"SD model (diffusers folder): {paths.sd_model}")
    print(f"BLIP captioner:              {paths.blip}")
    print(f"WD14 tagger:                 {paths.tagger}")
    print(f"images:                      {paths.dataset}")
    print("These are tiny models with random weights: their images are noise, not pictures. Next, try:")
    for command in next_commands(paths, standalone.output_dir()):
        print("  " + command)
    return 0


def next_commands(paths, output_dir: Path) -> list[str]:
    """The whole workflow on the demo set, as commands to paste (quoted for a POSIX shell). The images are 96-128 px:
    a 96 px training area with 16 px bucket steps gives each aspect ratio its own bucket and upscales nothing."""
    data, model = shlex.quote(str(paths.dataset)), shlex.quote(str(paths.sd_model))
    clean, lat = shlex.quote(str(paths.dataset / "meta_clean.json")), shlex.quote(str(paths.dataset / "meta_lat.json"))
    return [
        f"sdtrain caption {data} --caption_weights {shlex.quote(str(paths.blip))}",
        f"sdtrain tag {data} --model_dir {shlex.quote(str(paths.tagger))} --remove_underscore",
        f"sdtrain merge {data} {clean}",
        f"sdtrain buckets {data} {clean} {lat} {model} --max_resolution 96,96 --min_bucket_reso 64 "
        "--max_bucket_reso 128 --bucket_reso_steps 16",
        f"sdtrain train --pretrained_model_name_or_path {model} --train_data_dir {data} --in_json {lat} "
        "--resolution 96,96 --min_bucket_reso 64 --max_bucket_reso 128 --bucket_reso_steps 16 "
        "--network_module networks.lora --network_dim 8 --network_alpha 8 "
        "--learning_rate 1e-3 --train_batch_size 2 --max_train_steps 60 "
        f"--output_dir {shlex.quote(str(output_dir))} --output_name demo-lora",
        "sdtrain ui   (the Generate tab tries the LoRA)",
    ]
