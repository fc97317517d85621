"""modules/devices.py: where and in which dtype the WebUI runs its model. `torch_gc_calls` is the stub's own
counter, so tests can see that memory was released."""

import torch

cpu = torch.device("cpu")
device = None  # set by the WebUI's initialisation (shared_init.py); the stub fixture sets it
dtype = torch.float16
dtype_vae = torch.float16
dtype_unet = torch.float16
dtype_inference = torch.float16
unet_needs_upcast = False
fp8 = False

torch_gc_calls = 0


def get_optimal_device_name():
    return "cuda" if torch.cuda.is_available() else "cpu"


def get_optimal_device():
    return torch.device(get_optimal_device_name())


def torch_gc():
    global torch_gc_calls
    torch_gc_calls += 1
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()
