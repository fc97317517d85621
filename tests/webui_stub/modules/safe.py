"""modules/safe.py: at import the WebUI replaces `torch.load` (only that name; `torch.serialization.load` stays)
with a checker. As in v1.10.1 it accepts only zip entries named `<dir>/data.pkl`, `<dir>/version`,
`<dir>/byteorder`, `<dir>/data/<n>` and `<dir>/.data/serialization_id` (so it rejects the `.format_version` entry
that current torch writes), unpickles data.pkl (or a pre-zip file's five pickles) with an allowlist of globals,
and on any failure prints "Error verifying pickled file from <file>" with the traceback and returns None instead of
raising. `--disable-safe-unpickle` skips the check."""

import importlib
import pickle
import re
import sys
import traceback
import zipfile

import torch

ALLOWED_ENTRY = re.compile(r"^([^/]+)/((data/\d+)|version|byteorder|.data/serialization_id|(data\.pkl))$")
DATA_PKL = re.compile(r"^([^/]+)/data\.pkl$")
ALLOWED = {
    "collections": {"OrderedDict"},
    "torch._utils": {"_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_device_tensor_from_numpy"},
    "torch": {"FloatStorage", "HalfStorage", "IntStorage", "LongStorage", "DoubleStorage", "ByteStorage", "float32",
              "BFloat16Storage"},
    "torch.nn.modules.container": {"ParameterDict"},
    "numpy.core.multiarray": {"scalar", "_reconstruct"},
    "numpy": {"dtype", "ndarray"},
}  # fmt: skip
# (The real one also allows _codecs.encode and pytorch_lightning's ModelCheckpoint; SD-Train's files need neither.)


class RestrictedUnpickler(pickle.Unpickler):
    def persistent_load(self, saved_id):
        assert saved_id[0] == "storage"
        return torch.storage.TypedStorage(_internal=True)

    def find_class(self, module, name):
        if (module, name) == ("__builtin__", "set"):
            return set
        if name in ALLOWED.get(module, ()):
            return getattr(importlib.import_module(module), name)  # only the modules listed above
        raise Exception(f"global '{module}/{name}' is forbidden")


def check_pt(filename):
    try:
        with zipfile.ZipFile(filename) as archive:
            names = archive.namelist()
            for name in names:
                if not ALLOWED_ENTRY.match(name):
                    raise Exception(f"bad file inside {filename}: {name}")
            pickles = [n for n in names if DATA_PKL.match(n)]
            if not pickles:
                raise Exception(f"data.pkl not found in {filename}")
            if len(pickles) > 1:
                raise Exception(f"Multiple data.pkl found in {filename}")
            with archive.open(pickles[0]) as f:
                RestrictedUnpickler(f).load()
    except zipfile.BadZipfile:  # torch's format before 1.6: five pickles one after another
        with open(filename, "rb") as f:
            unpickler = RestrictedUnpickler(f)
            for _ in range(5):
                unpickler.load()


def load(filename, *args, **kwargs):
    from modules import shared

    try:
        if not shared.cmd_opts.disable_safe_unpickle:
            check_pt(filename)
    except pickle.UnpicklingError:
        _report(filename, "-----> !!!! The file is most likely corrupted !!!! <-----")
        return None
    except Exception:
        _report(filename, "The file may be malicious, so the program is not going to read it.")
        return None
    return unsafe_torch_load(filename, *args, **kwargs)


def _report(filename, verdict):
    # as modules/errors.report(): each line prefixed with "*** ", then the traceback
    for line in (f"Error verifying pickled file from {filename}", verdict):
        print(f"*** {line}", file=sys.stderr)
    traceback.print_exc()


unsafe_torch_load = torch.load
torch.load = load
