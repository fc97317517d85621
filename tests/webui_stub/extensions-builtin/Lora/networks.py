"""extensions-builtin/Lora/networks.py (imported by the WebUI as the top-level module `networks`): the registry of
LoRA files and the list of active networks.

list_available_networks() rescans --lora-dir (what POST /sdapi/v1/refresh-loras calls). load_networks(names)
replaces the active list; as in the real one it does NOT restore layer weights itself: each patched layer restores
its own from `network_weights_backup`/`network_bias_backup` the next time it runs (network_apply_weights)."""

import json
import os

from modules import shared

available_networks = {}
available_network_aliases = {}
loaded_networks = []
list_calls = 0


class NetworkOnDisk:
    def __init__(self, name, filename):
        self.name = name
        self.filename = filename
        self.metadata = {}
        if filename.endswith(".safetensors"):
            with open(filename, "rb") as f:
                header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
            self.metadata = header.get("__metadata__", {})
        self.alias = self.metadata.get("ss_output_name", name)


def list_available_networks():
    global list_calls
    list_calls += 1
    available_networks.clear()
    available_network_aliases.clear()
    os.makedirs(shared.cmd_opts.lora_dir, exist_ok=True)
    for root, _, files in os.walk(shared.cmd_opts.lora_dir):
        for file in sorted(files):
            if file.endswith((".pt", ".ckpt", ".safetensors")):
                name = os.path.splitext(file)[0]
                entry = NetworkOnDisk(name, os.path.join(root, file))
                available_networks[name] = entry
                available_network_aliases[name] = entry
                available_network_aliases[entry.alias] = entry


def load_networks(names, te_multipliers=None, unet_multipliers=None, dyn_dims=None):
    loaded_networks.clear()
    for name in names:
        if name in available_network_aliases:
            loaded_networks.append(available_network_aliases[name])
