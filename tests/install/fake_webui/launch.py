"""A stand-in for the WebUI v1.10.1 `launch` module as an extension's install.py sees it (the parts install.py uses).

Mirrors launch.py/modules/launch_utils.py: COMMANDLINE_ARGS is appended to sys.argv (modules/paths_internal.py),
`args.skip_install` comes from the command line, run_pip() is a no-op under --skip-install and otherwise runs
`"<python>" -m pip <command> --prefer-binary [--index-url INDEX_URL]` through a shell, raising RuntimeError when pip
fails. Each real call is also appended to $SDTRAIN_TEST_PIP_LOG (one JSON line), so tests can count them.
"""

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys

sys.argv += shlex.split(os.environ.get("COMMANDLINE_ARGS", ""))

_parser = argparse.ArgumentParser()
_parser.add_argument("--skip-install", action="store_true")
args, _ = _parser.parse_known_args()

python = sys.executable
index_url = os.environ.get("INDEX_URL", "")


def is_installed(package):
    try:
        return importlib.util.find_spec(package) is not None
    except ModuleNotFoundError:
        return False


def run_pip(command, desc=None, live=False):
    if args.skip_install:
        return None
    log = os.environ.get("SDTRAIN_TEST_PIP_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"command": command, "desc": desc}) + "\n")
    index_url_line = f" --index-url {index_url}" if index_url != "" else ""
    full = f'"{python}" -m pip {command} --prefer-binary{index_url_line}'
    print(f"Installing {desc}")
    result = subprocess.run(full, shell=True, env=os.environ, capture_output=True, encoding="utf8", errors="ignore")
    if result.returncode != 0:
        raise RuntimeError(
            f"Couldn't install {desc}.\nCommand: {full}\nError code: {result.returncode}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}"
        )
    return result.stdout
