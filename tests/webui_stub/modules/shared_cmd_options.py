"""modules/shared_cmd_options.py: runs every extension's preload(parser), parses, and derives
`disable_extension_access` (non-local UI without --enable-insecure-extension-access)."""

import importlib.util
import os
import shlex

from modules import cmd_args

parser = cmd_args.parser

for _preload in os.environ.get("SDTRAIN_STUB_PRELOADS", "").split(os.pathsep):
    if _preload:
        _spec = importlib.util.spec_from_file_location("preload", _preload)
        _module = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_module)
        _module.preload(parser)

cmd_opts = parser.parse_args(shlex.split(os.environ.get("SDTRAIN_STUB_ARGS", "")))
cmd_opts.webui_is_non_local = any([cmd_opts.share, cmd_opts.listen, cmd_opts.ngrok, cmd_opts.server_name])
cmd_opts.disable_extension_access = cmd_opts.webui_is_non_local and not cmd_opts.enable_insecure_extension_access
