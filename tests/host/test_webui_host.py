"""lib_sdtrain.host.webui against the WebUI stand-in (tests/webui_stub), with a real tiny model in the WebUI's
ldm layout: what SD-Train reads from the WebUI, and what it leaves behind."""

from __future__ import annotations

import inspect
import threading
import time
import typing
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lib_sdtrain import host
from lib_sdtrain.errors import Cancelled, SDTrainError
from lib_sdtrain.host import standalone
from lib_sdtrain.host import webui as adapter
from lib_sdtrain.host.types import Host
from lib_sdtrain.models.loading import load_sd_model
from lib_sdtrain.models.saving import sd_model_to_ldm
from tests.host.conftest import hijacked_key, make_webui_model, merge_fake_lora

TEXT_LAYER = "cond_stage_model.wrapped.transformer.text_model.encoder.layers.0.self_attn.q_proj"
TEXT_LAYER_LDM = "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj"


def test_outside_the_webui_the_standalone_host_is_used():
    assert adapter.is_webui() is False
    assert host.current() is standalone


def test_inside_the_webui_the_webui_host_is_used(webui):
    assert webui.shared.cmd_opts.sdtrain_dataset_dir is None  # preload.py ran on the WebUI's parser
    assert host.current() is adapter


def test_no_model_loaded_and_none_is_loaded_by_asking(webui):
    assert adapter.loaded_checkpoint() is None
    assert adapter.loaded_model_ldm_state_dict() is None
    assert webui.sd_models.load_model_calls == 0


def test_loaded_checkpoint_describes_the_webuis_model(loaded, webui):
    info = adapter.loaded_checkpoint()
    assert info.path == Path(webui.sd_models.model_path) / "tiny.safetensors"
    assert info.name == "tiny.safetensors"
    assert info.title == loaded.sd_checkpoint_info.title and info.title.startswith("tiny.safetensors [")
    assert info.hash == info.sha256[:10]
    assert info.is_sd1 and not info.is_sd2 and not info.is_sdxl
    assert info.prediction_type == "epsilon"


def test_weights_come_back_in_ldm_layout_without_the_active_lora(loaded, tiny_ldm, tiny_model):
    original = merge_fake_lora(loaded, TEXT_LAYER)
    live_before = {k: v.clone() for k, v in loaded.state_dict().items()}

    weights = adapter.loaded_model_ldm_state_dict()

    assert weights.from_file is False
    assert set(weights.state_dict) == set(tiny_ldm)
    for key, tensor in tiny_ldm.items():
        expected = tensor.half() if tensor.is_floating_point() else tensor
        assert torch.equal(weights.state_dict[key], expected), key
    assert torch.equal(weights.state_dict[TEXT_LAYER_LDM + ".weight"], original.weight)
    assert torch.equal(weights.state_dict[TEXT_LAYER_LDM + ".bias"], original.bias)
    assert weights.tokenizer is tiny_model.tokenizer
    # The WebUI's model is untouched: the LoRA is still merged, nothing shares storage with what we returned.
    for key, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, live_before[key]), key
    assert not torch.equal(loaded.get_submodule(TEXT_LAYER).weight, original.weight)
    live_key = hijacked_key("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight")
    assert weights.state_dict[live_key.replace(".wrapped", "")].data_ptr() != loaded.state_dict()[live_key].data_ptr()


def test_the_noise_schedule_comes_from_the_file_not_the_live_model(webui, tiny_ldm, tiny_model):
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    schedule = {"betas": betas.float(), "alphas_cumprod": torch.cumprod(1 - betas, 0).float()}
    folder = Path(webui.sd_models.model_path)
    folder.mkdir(parents=True)
    checkpoint = folder / "with-schedule.safetensors"
    save_file({**tiny_ldm, **schedule}, str(checkpoint))
    model = make_webui_model(webui, {**tiny_ldm, **schedule}, tiny_model.tokenizer, checkpoint)
    with torch.no_grad():  # what the WebUI's "Zero Terminal SNR" option does to the live buffer
        model.alphas_cumprod[-1] = 4.9e-08
    webui.sd_models.model_data.set_sd_model(model)

    weights = adapter.loaded_model_ldm_state_dict()

    assert model.betas.dtype == torch.float16  # the live copy is rounded
    assert torch.equal(weights.state_dict["betas"], schedule["betas"])
    assert torch.equal(weights.state_dict["alphas_cumprod"], schedule["alphas_cumprod"])


def test_fp8_weights_are_read_from_the_checkpoint_file_instead(loaded, webui, tiny_ldm):
    webui.devices.fp8 = True
    weights = adapter.loaded_model_ldm_state_dict()
    assert weights.from_file is True
    assert set(weights.state_dict) == set(tiny_ldm)
    assert all(torch.equal(weights.state_dict[k], v) for k, v in tiny_ldm.items())  # full precision, from disk


def test_a_loaded_sdxl_hands_over_its_sgm_weights_and_first_tokenizer(loaded_sdxl, tiny_sdxl_model):
    weights = adapter.loaded_model_ldm_state_dict()
    assert weights.checkpoint.version == "sdxl" and not weights.from_file
    assert weights.tokenizer is tiny_sdxl_model.tokenizer  # conditioner.embedders[0].wrapped.tokenizer
    keys = set(weights.state_dict)
    assert "conditioner.embedders.1.model.text_projection" in keys and not any(".wrapped" in k for k in keys)
    model = adapter.load_webui_model()
    assert model.version == "sdxl" and model.text_encoder_2 is not None and model.tokenizer_2 is not None
    assert torch.equal(
        model.text_encoder_2.text_projection.weight,
        tiny_sdxl_model.text_encoder_2.text_projection.weight.half().float(),
    )


def test_the_loaded_model_becomes_an_sdmodel_without_reading_the_file(loaded, tiny_model, monkeypatch):
    def no_file_reads(*args, **kwargs):
        raise AssertionError("read the checkpoint file")

    monkeypatch.setattr("lib_sdtrain.models.checkpoint_file.read_checkpoint", no_file_reads)
    model = adapter.load_webui_model()
    assert model.version == "sd1" and model.prediction_type == "epsilon"
    for name, tensor in tiny_model.unet.state_dict().items():
        assert torch.equal(model.unet.state_dict()[name], tensor.half().float()), name
    assert model.tokenizer is tiny_model.tokenizer


# --- memory, the lock, the job ----------------------------------------------------------------------------------


def test_vram_is_freed_and_the_model_comes_back(loaded, webui):
    gc_before = webui.devices.torch_gc_calls
    with adapter.free_vram_for_training():
        assert loaded.moves == [webui.devices.cpu]
        assert webui.shared.parallel_processing_allowed is False
    assert loaded.moves == [webui.devices.cpu, webui.shared.device]
    assert webui.shared.parallel_processing_allowed is True
    assert webui.devices.torch_gc_calls >= gc_before + 2


def test_the_model_comes_back_when_training_fails(loaded, webui):
    with pytest.raises(RuntimeError, match="out of memory"), adapter.free_vram_for_training():
        raise RuntimeError("CUDA out of memory")
    assert loaded.moves == [webui.devices.cpu, webui.shared.device]
    assert webui.shared.parallel_processing_allowed is True


def test_keeping_the_model_on_the_gpu_is_a_setting(loaded, webui):
    webui.shared.opts.data["sdtrain_unload_model"] = False
    with adapter.free_vram_for_training():
        pass
    assert loaded.moves == []


def test_the_gpu_lock_is_the_webuis_generation_lock(webui):
    generating, release = threading.Event(), threading.Event()

    def generation():  # what wrap_gradio_gpu_call does around txt2img
        with webui.call_queue.queue_lock:
            generating.set()
            release.wait(5)

    worker = threading.Thread(target=generation)
    worker.start()
    generating.wait(5)
    with pytest.raises(host.GpuBusyError), adapter.gpu_lock(wait=False):
        pass

    order = []
    threading.Timer(0.2, lambda: (order.append("generation done"), release.set())).start()
    with adapter.gpu_lock(task_id="task(abc)"):
        order.append("training")
        assert "task(abc)" in webui.progress.pending_tasks  # queued while waiting; job() starts it
    worker.join(5)
    assert order == ["generation done", "training"]
    assert webui.call_queue.queue_lock.acquire(blocking=False)  # released again
    webui.call_queue.queue_lock.release()


def test_progress_reaches_the_webuis_progress_bar_and_interrupt_cancels(webui):
    from PIL import Image

    state = webui.shared.state
    with adapter.job("SD-Train: training", task_id="task(xyz)"):
        assert state.job == "SD-Train: training"
        assert webui.progress.current_task == "task(xyz)"
        progress = adapter.make_progress()
        progress.start(10, "steps")
        progress.advance(3, loss=0.125)
        assert (state.job_count, state.job_no) == (10, 3)
        assert state.textinfo == "steps 3/10: loss 0.125"
        sample = Image.new("RGB", (8, 8), "red")
        progress.image(sample, "sample")
        assert state.current_image is sample
        progress.check_cancelled()  # not interrupted: nothing happens
        state.interrupt()  # the Interrupt button
        assert progress.cancelled
        with pytest.raises(Cancelled):
            progress.check_cancelled()
    assert state.job == "" and state.job_count == 0
    assert webui.progress.current_task is None and "task(xyz)" in webui.progress.finished_tasks


def test_training_session_restores_everything_even_after_an_error(loaded, webui):
    with pytest.raises(ValueError), host.training_session("SD-Train: my-lora") as session:
        assert session is adapter
        assert webui.shared.state.job == "SD-Train: my-lora"
        assert webui.shared.parallel_processing_allowed is False
        assert loaded.moves == [webui.devices.cpu]
        assert webui.call_queue.queue_lock.acquire(blocking=False) is False
        raise ValueError("bad dataset")
    assert webui.shared.state.job == ""
    assert webui.shared.parallel_processing_allowed is True
    assert loaded.moves[-1] == webui.shared.device
    assert webui.call_queue.queue_lock.acquire(blocking=False)
    webui.call_queue.queue_lock.release()


# --- folders and lists -----------------------------------------------------------------------------------------


def test_default_folders_follow_the_webuis_data_dir(webui):
    data = webui.data_dir
    assert adapter.lora_dir() == data / "models" / "Lora"
    assert adapter.checkpoints_dir() == data / "models" / "Stable-diffusion"
    assert adapter.dataset_dir() == data / "sd-train" / "datasets"
    assert adapter.output_dir() == data / "outputs" / "sd-train"
    assert adapter.models_dir() == data / "models" / "sd-train"


def test_folders_follow_the_command_line(start_webui, tmp_path):
    start_webui(
        f"--lora-dir {tmp_path}/loras --ckpt-dir {tmp_path}/ckpts --sdtrain-dataset-dir {tmp_path}/ds "
        f"--sdtrain-output-dir {tmp_path}/out --sdtrain-models-dir {tmp_path}/m"
    )
    h = adapter
    assert (h.lora_dir(), h.checkpoints_dir()) == (tmp_path / "loras", tmp_path / "ckpts")
    assert (h.dataset_dir(), h.output_dir(), h.models_dir()) == (tmp_path / "ds", tmp_path / "out", tmp_path / "m")


def test_a_new_lora_is_listed_after_refresh(webui):
    lora_dir = adapter.lora_dir()
    webui.networks.list_available_networks()
    assert webui.networks.available_networks == {}
    lora = {"lora_unet_x.alpha": torch.tensor(1.0)}
    save_file(lora, str(lora_dir / "new-lora.safetensors"), {"ss_output_name": "nl"})
    assert adapter.refresh_loras() is True
    assert set(webui.networks.available_networks) == {"new-lora"}
    assert "nl" in webui.networks.available_network_aliases


def test_without_the_builtin_lora_refresh_reports_false(start_webui):
    start_webui(lora=False)
    assert adapter.refresh_loras() is False


def test_a_new_checkpoint_is_listed_after_refresh(webui, tiny_ldm):
    folder = adapter.checkpoints_dir()
    folder.mkdir(parents=True)
    save_file({"x": torch.zeros(1)}, str(folder / "trained.safetensors"))
    assert webui.sd_models.checkpoints_list == {}
    assert adapter.refresh_checkpoints() is True
    assert [info.name for info in webui.sd_models.checkpoints_list.values()] == ["trained.safetensors"]


# --- who may do what --------------------------------------------------------------------------------------------


def test_local_webui_may_use_any_folder(webui, tmp_path):
    assert adapter.file_access_allowed() is True
    assert adapter.check_path_allowed(tmp_path / "anywhere") == (tmp_path / "anywhere").resolve()


def test_listening_webui_keeps_to_sdtrains_folders(start_webui, tmp_path):
    start_webui("--listen")
    h = adapter
    assert h.file_access_allowed() is False
    inside = h.dataset_dir() / "my-set"
    assert h.check_path_allowed(inside) == inside.resolve()
    assert h.check_path_allowed(h.lora_dir() / "out.safetensors").parent == h.lora_dir().resolve()
    for outside in (tmp_path / "elsewhere", h.dataset_dir() / ".." / ".." / ".." / "etc"):
        with pytest.raises(SDTrainError, match="--enable-insecure-extension-access"):
            h.check_path_allowed(outside)


def test_insecure_extension_access_lifts_the_limit(start_webui, tmp_path):
    start_webui("--listen --enable-insecure-extension-access")
    assert adapter.file_access_allowed() is True
    assert adapter.check_path_allowed(tmp_path / "elsewhere") == (tmp_path / "elsewhere").resolve()


@pytest.mark.parametrize("auth", [None, "alice:s3:cret,bob:pw"])
def test_routes_are_protected_like_the_webuis_api(start_webui, auth):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    start_webui(f"--api-auth {auth}" if auth else "")
    app = FastAPI()
    adapter.add_api_route(app, "/sdtrain/v1/ping", lambda: {"ok": True}, methods=["GET"])
    client = TestClient(app)
    if auth is None:
        assert client.get("/sdtrain/v1/ping").json() == {"ok": True}
        return
    assert client.get("/sdtrain/v1/ping").status_code == 401
    assert client.get("/sdtrain/v1/ping", auth=("alice", "wrong")).status_code == 401
    assert client.get("/sdtrain/v1/ping", auth=("alice", "s3:cret")).json() == {"ok": True}
    assert client.get("/sdtrain/v1/ping", auth=("bob", "pw")).status_code == 200


# --- both hosts offer the same interface ---------------------------------------------------------------------------


def _public_functions(module) -> dict[str, object]:
    return {
        name: obj
        for name, obj in vars(module).items()
        if inspect.isfunction(obj) and not name.startswith("_") and obj.__module__ == module.__name__
    }


def _protocol_functions() -> dict[str, object]:
    return {name: obj for name, obj in vars(Host).items() if inspect.isfunction(obj) and not name.startswith("_")}


def test_standalone_and_webui_hosts_have_the_same_functions():
    webui_functions, standalone_functions = _public_functions(adapter), _public_functions(standalone)
    standalone_functions.pop("configure")  # how the standalone app sets its folders: not part of the contract
    assert set(webui_functions) == set(standalone_functions) == set(_protocol_functions())


@pytest.mark.parametrize("module", [adapter, standalone], ids=["webui", "standalone"])
def test_both_hosts_implement_the_host_protocol(module):
    """Every member of host.types.Host, with the Protocol's signature less `self`: the same parameters (names,
    kinds, defaults, annotations) and the same return type (make_progress may return a subclass of Progress)."""
    for name, kind in typing.get_type_hints(Host).items():
        assert isinstance(getattr(module, name), kind), name
    for name, member in _protocol_functions().items():
        function = getattr(module, name, None)
        assert inspect.isfunction(function), name
        expected, actual = inspect.signature(member), inspect.signature(function)
        assert list(expected.parameters.values())[1:] == list(actual.parameters.values()), name
        expected_return = typing.get_type_hints(member).get("return", inspect.Signature.empty)
        actual_return = typing.get_type_hints(function).get("return", inspect.Signature.empty)
        if isinstance(expected_return, type) and isinstance(actual_return, type):
            assert issubclass(actual_return, expected_return), name
        else:
            assert actual_return == expected_return, name


def test_standalone_host_works_without_a_webui(tmp_path):
    previous = standalone.configure()
    standalone.configure(home=tmp_path, restrict_file_access=True)
    try:
        assert standalone.lora_dir() == tmp_path / "models" / "Lora"
        with host.training_session("job") as session:
            assert session is standalone
            with pytest.raises(host.GpuBusyError), standalone.gpu_lock(wait=False):
                pass
        with pytest.raises(SDTrainError):
            standalone.check_path_allowed(tmp_path.parent / "elsewhere")
        assert standalone.check_path_allowed(tmp_path / "sd-train" / "datasets" / "x").name == "x"
    finally:
        standalone.configure(home=previous.home, restrict_file_access=previous.restrict_file_access)


def test_a_slow_generation_does_not_block_forever_when_not_waiting(webui):
    start = time.monotonic()
    with webui.call_queue.queue_lock, pytest.raises(host.GpuBusyError), adapter.gpu_lock(wait=False):
        pass
    assert time.monotonic() - start < 1


def test_sd2_in_the_webui_trains_with_open_clips_vocabulary(webui, tiny_sd2_dir, monkeypatch):
    """SD2's text encoder tokenizes with open_clip's SimpleTokenizer in the WebUI; the host hands over the same
    BPE as a transformers CLIPTokenizer. Here open_clip's tokenizer is built from the tiny SD2 model's files."""
    import json
    import sys
    from types import ModuleType, SimpleNamespace

    sd2 = load_sd_model(tiny_sd2_dir)
    vocab = json.loads((tiny_sd2_dir / "tokenizer" / "vocab.json").read_text())
    merges = (tiny_sd2_dir / "tokenizer" / "merges.txt").read_text().strip().split("\n")[1:]
    open_clip_names = {"<|startoftext|>": "<start_of_text>", "<|endoftext|>": "<end_of_text>"}
    simple_tokenizer = SimpleNamespace(
        encoder={open_clip_names.get(t, t): i for t, i in vocab.items()},
        bpe_ranks={tuple(m.split()): rank for rank, m in enumerate(merges)},
    )
    open_clip = ModuleType("open_clip")
    open_clip.tokenizer = ModuleType("open_clip.tokenizer")
    open_clip.tokenizer._tokenizer = simple_tokenizer
    monkeypatch.setitem(sys.modules, "open_clip", open_clip)
    monkeypatch.setitem(sys.modules, "open_clip.tokenizer", open_clip.tokenizer)

    folder = Path(webui.sd_models.model_path)
    folder.mkdir(parents=True)
    checkpoint = folder / "tiny-v.safetensors"
    ldm = {k: v.contiguous() for k, v in sd_model_to_ldm(sd2).items()}
    save_file(ldm, str(checkpoint))
    model = make_webui_model(webui, ldm, None, checkpoint, version="sd2")
    model.parameterization = "v"
    webui.sd_models.model_data.set_sd_model(model)

    weights = adapter.loaded_model_ldm_state_dict()
    assert weights.checkpoint.is_sd2 and weights.checkpoint.prediction_type == "v_prediction"
    assert weights.tokenizer.pad_token == "!" and weights.tokenizer.convert_tokens_to_ids("!") == 0
    for text in ("a photo of sks", "the red dog in style"):
        assert weights.tokenizer(text).input_ids == sd2.tokenizer(text).input_ids

    trained_from = adapter.load_webui_model()
    assert (trained_from.version, trained_from.prediction_type) == ("sd2", "v_prediction")
    for name, tensor in sd2.text_encoder.state_dict().items():
        assert torch.equal(trained_from.text_encoder.state_dict()[name], tensor.half().to(tensor.dtype)), name
