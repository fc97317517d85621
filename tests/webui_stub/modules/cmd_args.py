"""modules/cmd_args.py: the WebUI's command-line options that SD-Train reads (names and defaults as in v1.10.1)."""

import argparse
import os

from modules.paths_internal import data_path, models_path

parser = argparse.ArgumentParser()
parser.add_argument("--data-dir", type=str, default=data_path)
parser.add_argument("--models-dir", type=str, default=None)
parser.add_argument("--ckpt-dir", type=str, default=None)
parser.add_argument("--no-half", action="store_true")
parser.add_argument("--no-half-vae", action="store_true")
parser.add_argument("--medvram", action="store_true")
parser.add_argument("--lowvram", action="store_true")
parser.add_argument("--share", action="store_true")
parser.add_argument("--listen", action="store_true")
parser.add_argument("--ngrok", type=str, default=None)
parser.add_argument("--server-name", type=str, default=None)
parser.add_argument("--enable-insecure-extension-access", action="store_true")
parser.add_argument("--api", action="store_true")
parser.add_argument("--api-auth", type=str, default=None)
parser.add_argument("--skip-install", action="store_true")
parser.add_argument("--disable-safe-unpickle", action="store_true")
parser.add_argument("--ui-settings-file", type=str, default=os.path.join(data_path, "config.json"))
# Added by extensions-builtin/Lora/preload.py in the real WebUI.
parser.add_argument("--lora-dir", type=str, default=os.path.join(models_path, "Lora"))
