"""modules/safe.py: at import the WebUI replaces `torch.load` (only that name; `torch.serialization.load` stays)
with a checker. As in v1.10.1 it accepts only zip entries named `<dir>/data.pkl`, `<dir>/version`,
`<dir>/byteorder`, `<dir>/data/<n>` and `<dir>/.data/serialization_id` (so it rejects the `.format_version` entry
that current torch writes), unpickles data.pkl with an allowlist of globals, and on any failure prints
"Error verifying pickled file from <file>" and returns None instead of raising. `--disable-safe-unpickle` skips it."""

import collections
import pickle
import re
import sys
import traceback
import zipfile

import torch

ALLOWED_ENTRY = re.compile(r"^([^/]+)/((data/\d+)|version|byteorder|.data/serialization_id|(data\.pkl))$")
DATA_PKL = re.compile(r"^([^/]+)/data\.pkl$")
STORAGES = {"FloatStorage", "HalfStorage", "IntStorage", "LongStorage", "DoubleStorage", "ByteStorage", "float32",
            "BFloat16Storage"}  # fmt: skip


class _Checker(pickle.Unpickler):
    def persistent_load(self, saved_id):
        return torch.storage.TypedStorage(_internal=True)

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_parameter"):
            return getattr(torch._utils, name)
        if module == "torch" and name in STORAGES:
            return getattr(torch, name)
        if (module, name) == ("__builtin__", "set"):
            return set
        raise Exception(f"global '{module}/{name}' is forbidden")


def check_pt(filename):
    with zipfile.ZipFile(filename) as archive:
        names = archive.namelist()
        for name in names:
            if not ALLOWED_ENTRY.match(name):
                raise Exception(f"bad file inside {filename}: {name}")
        pickles = [n for n in names if DATA_PKL.match(n)]
        if len(pickles) != 1:
            raise Exception(f"{len(pickles)} data.pkl in {filename}")
        with archive.open(pickles[0]) as f:
            _Checker(f).load()


def load(filename, *args, **kwargs):
    from modules import shared

    try:
        if not shared.cmd_opts.disable_safe_unpickle:
            check_pt(filename)
    except Exception:
        print(f"*** Error verifying pickled file from {filename}", file=sys.stderr)
        print("*** The file may be malicious, so the program is not going to read it.", file=sys.stderr)
        traceback.print_exc()
        return None
    return unsafe_torch_load(filename, *args, **kwargs)


unsafe_torch_load = torch.load
torch.load = load
