"""modules/sd_models.py: CheckpointInfo, list_models(), the loaded-model registry (model_data) and the functions that
move the model: unload_model_weights() = send_model_to_cpu() in v1.10.1 (the model stays registered),
send_model_to_device() is what POST /sdapi/v1/reload-checkpoint calls.

The stub never builds a model: tests register one with model_data.set_sd_model(). get_sd_model() counts the loads
it would have started (`load_model_calls`), so tests can check that nothing triggers one."""

import hashlib
import os
import threading

from modules import devices, paths, shared

model_dir = "Stable-diffusion"
model_path = os.path.abspath(os.path.join(paths.models_path, model_dir))

checkpoints_list = {}
checkpoint_aliases = {}
load_model_calls = 0


def model_hash(filename):
    """The old 8-digit hash of 64 KiB at offset 1 MiB."""
    try:
        with open(filename, "rb") as file:
            file.seek(0x100000)
            return hashlib.sha256(file.read(0x10000)).hexdigest()[0:8]
    except FileNotFoundError:
        return "NOFILE"


class CheckpointInfo:
    def __init__(self, filename):
        self.filename = filename
        abspath = os.path.abspath(filename)
        ckpt_dir = os.path.abspath(shared.cmd_opts.ckpt_dir) if shared.cmd_opts.ckpt_dir is not None else None
        self.is_safetensors = os.path.splitext(filename)[1].lower() == ".safetensors"
        if ckpt_dir and abspath.startswith(ckpt_dir):
            name = abspath.replace(ckpt_dir, "")
        elif abspath.startswith(model_path):
            name = abspath.replace(model_path, "")
        else:
            name = os.path.basename(filename)
        name = name.lstrip("\\/")
        self.name = name
        self.name_for_extra = os.path.splitext(os.path.basename(filename))[0]
        self.model_name = os.path.splitext(name.replace("/", "_").replace("\\", "_"))[0]
        self.hash = model_hash(filename)
        self.sha256 = None  # the real one reads hashes from a cache; computed on first load (calculate_shorthash)
        self.shorthash = None
        self.title = name
        self.short_title = self.name_for_extra
        self.metadata = {}
        self.ids = [self.hash, self.model_name, self.title, name, self.name_for_extra]

    def register(self):
        checkpoints_list[self.title] = self
        for id_ in self.ids:
            checkpoint_aliases[id_] = self

    def calculate_shorthash(self):
        with open(self.filename, "rb") as f:
            self.sha256 = hashlib.sha256(f.read()).hexdigest()
        self.shorthash = self.sha256[0:10]
        self.title = f"{self.name} [{self.shorthash}]"
        self.register()
        return self.shorthash


def list_models():
    checkpoints_list.clear()
    checkpoint_aliases.clear()
    folders = [model_path] + ([shared.cmd_opts.ckpt_dir] if shared.cmd_opts.ckpt_dir else [])
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for root, _, files in os.walk(folder):
            for file in sorted(files):
                if file.endswith((".ckpt", ".safetensors")) and not file.endswith((".vae.ckpt", ".vae.safetensors")):
                    CheckpointInfo(os.path.join(root, file)).register()


class SdModelData:
    def __init__(self):
        self.sd_model = None
        self.loaded_sd_models = []
        self.was_loaded_at_least_once = False
        self.lock = threading.Lock()

    def get_sd_model(self):
        global load_model_calls
        if self.was_loaded_at_least_once:
            return self.sd_model
        if self.sd_model is None:
            load_model_calls += 1  # the real one calls load_model() here
            self.was_loaded_at_least_once = True
        return self.sd_model

    def set_sd_model(self, v, already_loaded=False):
        self.sd_model = v
        if v in self.loaded_sd_models:
            self.loaded_sd_models.remove(v)
        if v is not None:
            self.loaded_sd_models.insert(0, v)


model_data = SdModelData()


def send_model_to_cpu(m):
    if m is not None:
        m.to(devices.cpu)
    devices.torch_gc()


def send_model_to_device(m):
    m.to(shared.device)


def unload_model_weights(sd_model=None, info=None):
    send_model_to_cpu(sd_model or shared.sd_model)
    return sd_model


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    sd_model = sd_model or model_data.sd_model
    if sd_model is not None:
        send_model_to_device(sd_model)
    return sd_model
