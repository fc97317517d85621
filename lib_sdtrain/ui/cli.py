"""`sdtrain ui`: the standalone app, the SD-Train UI in a plain Gradio server (127.0.0.1:7870 by default)."""

from __future__ import annotations

import argparse
import os

from lib_sdtrain.utils.path_kinds import PathKind, add_argument

DEFAULT_PORT = 7870  # beside the WebUI's 7860


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ui",
        help="start the SD-Train app in the browser (dataset, prepare, train, generate)",
        description="Serve the SD-Train UI. Listens on 127.0.0.1 unless --listen; with --listen or --share only "
        "SD-Train's own folders can be used, as in the WebUI. With no model present it offers a demo set.",
    )
    add_argument(
        p,
        "--home",
        kind=PathKind.WRITE_FOLDER,
        help="data folder (models/, sd-train/datasets/, outputs/); default $SDTRAIN_HOME or ./sd-train",
    )
    p.add_argument("--listen", action="store_true", help="listen on 0.0.0.0 (other machines can connect)")
    p.add_argument("--port", type=int, default=int(os.environ.get("SDTRAIN_PORT", DEFAULT_PORT)), help="(7870)")
    p.add_argument("--share", action="store_true", help="also make a public gradio.live link")
    add_argument(p, "--auth", kind=PathKind.TEXT, help="user:password[,user:password...] asked for by the page")
    p.add_argument("--api", action="store_true", help="serve the /sdtrain/v1 API too")
    add_argument(
        p, "--api-auth", kind=PathKind.TEXT, dest="api_auth", help="user:password[,...] for the API (HTTP Basic)"
    )
    add_argument(
        p,
        "--dataset-dir",
        dest="dataset_dir",
        kind=PathKind.WRITE_FOLDER,
        help="datasets folder (default HOME/sd-train/datasets)",
    )
    add_argument(
        p,
        "--output-dir",
        dest="output_dir",
        kind=PathKind.WRITE_FOLDER,
        help="outputs folder (default HOME/outputs/sd-train)",
    )
    add_argument(
        p,
        "--models-dir",
        dest="models_dir",
        kind=PathKind.WRITE_FOLDER,
        help="SD-Train's models folder (default HOME/models/sd-train)",
    )
    add_argument(
        p,
        "--ckpt-dir",
        dest="checkpoints_dir",
        kind=PathKind.WRITE_FOLDER,
        help="checkpoints (default HOME/models/Stable-diffusion)",
    )
    add_argument(
        p, "--lora-dir", dest="lora_dir", kind=PathKind.WRITE_FOLDER, help="LoRA folder (default HOME/models/Lora)"
    )
    p.add_argument("--no-browser", action="store_true", help="accepted for scripts; the app never opens one")
    p.set_defaults(handler=run_ui)


def run_ui(args: argparse.Namespace) -> int:
    from lib_sdtrain.ui.standalone_app import AppSettings, serve

    serve(
        AppSettings(
            home=args.home,
            listen=args.listen,
            port=args.port,
            share=args.share,
            auth=args.auth,
            api=args.api,
            api_auth=args.api_auth,
            dataset_dir=args.dataset_dir,
            output_dir=args.output_dir,
            models_dir=args.models_dir,
            checkpoints_dir=args.checkpoints_dir,
            lora_dir=args.lora_dir,
        )
    )
    return 0
