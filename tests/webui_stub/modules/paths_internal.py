"""modules/paths_internal.py: the WebUI's folders. --data-dir moves user data; models live in <data>/models."""

import argparse
import os
import shlex

script_path = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))

_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--data-dir", type=str, default=script_path)
_pre.add_argument("--models-dir", type=str, default=None)
_known, _ = _pre.parse_known_args(shlex.split(os.environ.get("SDTRAIN_STUB_ARGS", "")))

data_path = _known.data_dir
models_path = _known.models_dir or os.path.join(data_path, "models")
extensions_dir = os.path.join(data_path, "extensions")
extensions_builtin_dir = os.path.join(script_path, "extensions-builtin")
