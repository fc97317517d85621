"""The WebUI stand-in (tests/webui_stub) as a fixture, and a model shaped like the WebUI's loaded model."""

from __future__ import annotations

import importlib
import importlib.util
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from tests.train.conftest import sks_dataset  # noqa: F401 (a fixture for the training glue tests)

ROOT = Path(__file__).resolve().parents[2]
STUB = ROOT / "tests" / "webui_stub"
LORA_NETWORKS = STUB / "extensions-builtin" / "Lora" / "networks.py"
WEBUI_MODULE_NAMES = ("modules", "networks")


def _is_webui_module(name: str) -> bool:
    return any(name == top or name.startswith(top + ".") for top in WEBUI_MODULE_NAMES)


@dataclass
class StubWebUI:
    data_dir: Path
    shared: ModuleType
    sd_models: ModuleType
    devices: ModuleType
    call_queue: ModuleType
    progress: ModuleType
    script_callbacks: ModuleType
    networks: ModuleType | None


@pytest.fixture
def start_webui(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., StubWebUI]]:
    """start_webui("--listen ...", lora=True) imports the stand-in `modules` as the WebUI would have them after
    startup (SD-Train's preload.py applied, the built-in Lora's `networks` loaded unless lora=False), with its data
    folder in tmp_path, and torch.load replaced by modules/safe.py's checker. Everything is removed from sys.modules
    and sys.path, and torch.load restored, afterwards."""
    saved = {name: module for name, module in sys.modules.items() if _is_webui_module(name)}
    torch_load = torch.load

    def start(args: str = "", lora: bool = True) -> StubWebUI:
        for name in [n for n in sys.modules if _is_webui_module(n)]:
            del sys.modules[name]
        torch.load = torch_load  # a second start wraps the real torch.load, not the previous start's checker
        data_dir = tmp_path / "webui"
        monkeypatch.setenv("SDTRAIN_STUB_ARGS", f"--data-dir {shlex.quote(str(data_dir))} {args}")
        monkeypatch.setenv("SDTRAIN_STUB_PRELOADS", str(ROOT / "preload.py"))
        monkeypatch.syspath_prepend(str(STUB))
        shared = importlib.import_module("modules.shared")
        importlib.import_module("modules.safe")  # replaces torch.load with its checker, as the WebUI does at start
        devices = importlib.import_module("modules.devices")
        devices.device = shared.device = torch.device("cpu")
        networks = None
        if lora:
            spec = importlib.util.spec_from_file_location("networks", LORA_NETWORKS)
            networks = importlib.util.module_from_spec(spec)
            sys.modules["networks"] = networks
            spec.loader.exec_module(networks)
        return StubWebUI(
            data_dir=data_dir,
            shared=shared,
            sd_models=importlib.import_module("modules.sd_models"),
            devices=devices,
            call_queue=importlib.import_module("modules.call_queue"),
            progress=importlib.import_module("modules.progress"),
            script_callbacks=importlib.import_module("modules.script_callbacks"),
            networks=networks,
        )

    yield start
    torch.load = torch_load  # the stand-in's modules/safe.py replaced it
    for name in [n for n in sys.modules if _is_webui_module(n)]:
        del sys.modules[name]
    sys.modules.update(saved)


@pytest.fixture
def webui(start_webui) -> StubWebUI:
    return start_webui()


# --- a model shaped like the WebUI's -----------------------------------------------------------------------------


class TensorTree(torch.nn.Module):
    """Holds tensors at dotted paths, so its state_dict() has exactly the given keys."""

    def put(self, key: str, tensor: torch.Tensor) -> None:
        *path, leaf = key.split(".")
        node: torch.nn.Module = self
        for part in path:
            if part not in node._modules:
                node.add_module(part, TensorTree())
            node = node._modules[part]
        if tensor.is_floating_point():
            node.register_parameter(leaf, torch.nn.Parameter(tensor, requires_grad=False))
        else:
            node.register_buffer(leaf, tensor)


class FakeWebUIModel(TensorTree):
    """The WebUI's LatentDiffusion as SD-Train sees it: ldm-layout modules with the text encoder behind the
    WebUI's hijack wrappers (cond_stage_model.wrapped..., token_embedding.wrapped), half precision, and the
    attributes sd_models.load_model_weights() sets. Records where it is moved."""

    def __init__(self) -> None:
        super().__init__()
        self.moves: list[Any] = []

    def to(self, *args: Any, **kwargs: Any) -> FakeWebUIModel:
        self.moves.append(args[0] if args else kwargs.get("device"))
        return super().to(*args, **kwargs)


def hijacked_key(ldm_key: str) -> str:
    """The name modules/sd_hijack.py gives a text-encoder tensor while the hijack is applied: SD1's
    cond_stage_model and each of SDXL's conditioner.embedders behind a `.wrapped`, their token embeddings too."""
    for prefix in ("cond_stage_model.", "conditioner.embedders.0.", "conditioner.embedders.1."):
        if ldm_key.startswith(prefix):
            key = prefix + "wrapped." + ldm_key[len(prefix) :]
            return key.replace(".token_embedding.weight", ".token_embedding.wrapped.weight")
    return ldm_key


def make_webui_model(
    stub: StubWebUI,
    ldm_state_dict: dict[str, torch.Tensor],
    tokenizer: Any,
    checkpoint_file: Path,
    version: str = "sd1",
    half: bool = True,
) -> FakeWebUIModel:
    model = FakeWebUIModel()
    for key, tensor in ldm_state_dict.items():
        tensor = tensor.clone()
        model.put(hijacked_key(key), tensor.half() if half and tensor.is_floating_point() else tensor)
    first_encoder = "conditioner.embedders.0.wrapped" if version == "sdxl" else "cond_stage_model.wrapped"
    model.get_submodule(first_encoder).tokenizer = tokenizer
    model.sd_checkpoint_info = stub.sd_models.CheckpointInfo(str(checkpoint_file))
    model.sd_model_checkpoint = str(checkpoint_file)
    model.sd_model_hash = model.sd_checkpoint_info.calculate_shorthash()
    for flag in ("sd1", "sd2", "sdxl", "ssd", "sd3"):
        setattr(model, f"is_{flag}", flag == version)
    model.lowvram = False
    model.parameterization = "eps"
    return model


def merge_fake_lora(model: torch.nn.Module, layer: str, scale: float = 0.5) -> SimpleNamespace:
    """Do to one layer what the built-in Lora's network_apply_weights() does: back up weight and bias to the CPU,
    add a delta in place, record the active network names."""
    module = model.get_submodule(layer)
    original = SimpleNamespace(weight=module.weight.detach().clone(), bias=module.bias.detach().clone())
    module.network_weights_backup = module.weight.detach().to("cpu", copy=True)
    module.network_bias_backup = module.bias.detach().to("cpu", copy=True)
    with torch.no_grad():
        module.weight += scale
        module.bias += scale
    module.network_current_names = (("my-lora", 1.0, 1.0, 1.0),)
    return original


# --- the WebUI with the tiny model loaded -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model(tiny_sd_dir):
    from lib_sdtrain.models.loading import load_sd_model

    return load_sd_model(tiny_sd_dir)


@pytest.fixture(scope="session")
def tiny_ldm(tiny_model) -> dict[str, torch.Tensor]:
    from lib_sdtrain.models.saving import sd_model_to_ldm

    return {k: v.contiguous() for k, v in sd_model_to_ldm(tiny_model).items()}


@pytest.fixture(scope="session")
def tiny_sdxl_model(tmp_path_factory):
    from lib_sdtrain.demo.tiny_models import write_tiny_sdxl_diffusers_model
    from lib_sdtrain.models.loading import load_sd_model

    return load_sd_model(write_tiny_sdxl_diffusers_model(tmp_path_factory.mktemp("models") / "tiny-sdxl"))


@pytest.fixture
def loaded_sdxl(webui, tiny_sdxl_model) -> FakeWebUIModel:
    """The stand-in WebUI with a tiny SDXL loaded from models/Stable-diffusion/tiny-xl.safetensors (SGM layout:
    conditioner.embedders.0/1 behind the hijack's wrappers, is_sdxl)."""
    from lib_sdtrain.models.saving import sd_model_to_ldm

    ldm = {k: v.contiguous() for k, v in sd_model_to_ldm(tiny_sdxl_model).items()}
    folder = Path(webui.sd_models.model_path)
    folder.mkdir(parents=True)
    checkpoint = folder / "tiny-xl.safetensors"
    save_file(ldm, str(checkpoint))
    model = make_webui_model(webui, ldm, tiny_sdxl_model.tokenizer, checkpoint, version="sdxl")
    webui.sd_models.model_data.set_sd_model(model)
    return model


@pytest.fixture
def loaded(webui, tiny_ldm, tiny_model) -> FakeWebUIModel:
    """The stand-in WebUI with the tiny model loaded from models/Stable-diffusion/tiny.safetensors."""
    folder = Path(webui.sd_models.model_path)
    folder.mkdir(parents=True)
    checkpoint = folder / "tiny.safetensors"
    save_file(tiny_ldm, str(checkpoint))
    model = make_webui_model(webui, tiny_ldm, tiny_model.tokenizer, checkpoint)
    webui.sd_models.model_data.set_sd_model(model)
    return model
