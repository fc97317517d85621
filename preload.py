"""SD-Train's command-line options, added to the WebUI's parser (modules/shared_cmd_options.py calls
`preload(parser)` for every extension before the options are parsed). Imports nothing but argparse: it runs
before the WebUI's modules are set up.

Defaults are None; lib_sdtrain.host resolves them against the WebUI's folders (--data-dir, --lora-dir). Whether the
tab may read and write arbitrary folders follows the WebUI's own flags (--listen/--share/--ngrok/--server-name
restrict it unless --enable-insecure-extension-access), so there is no SD-Train flag for that.
"""

import argparse


def preload(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("SD-Train")
    group.add_argument(
        "--sdtrain-dataset-dir",
        type=str,
        default=None,
        help="SD-Train: default folder for datasets (image folders with their captions); "
        "default: <data dir>/sd-train/datasets",
    )
    group.add_argument(
        "--sdtrain-output-dir",
        type=str,
        default=None,
        help="SD-Train: folder for training runs (samples, logs, resumable state); "
        "default: <data dir>/outputs/sd-train. Finished LoRAs are saved to the Lora folder (--lora-dir), "
        "fine-tuned models to the checkpoint folder",
    )
    group.add_argument(
        "--sdtrain-models-dir",
        type=str,
        default=None,
        help="SD-Train: folder for the captioning and tagging models (BLIP, WD14); default: <models dir>/sd-train",
    )
