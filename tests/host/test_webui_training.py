"""Training inside the WebUI stand-in, through the job runner as the tab and the API start it: the WebUI's model
leaves the GPU and comes back whatever happens, generations wait behind training, the LoRA names the WebUI
checkpoint it came from and lands in the Lora folder with its card; what cannot work is refused before a job starts."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lib_sdtrain.host import standalone
from lib_sdtrain.host.types import LOADED_CHECKPOINT
from lib_sdtrain.jobs import CANCELLED, DONE, FAILED, InputError, runner
from lib_sdtrain.network.kohya_file import model_hashes
from tests.train.conftest import train_settings
from tests.waiting import finished, wait_for

TASK = "task(sdtrain-test)"


@pytest.fixture
def start_train():
    """runner().start("train", ...), with every job it started stopped and finished before the stand-in goes."""
    started = []

    def start(options: dict, **kwargs):
        job = runner().start("train", options, **kwargs)
        started.append(job)
        return job

    yield start
    for job in started:
        runner().cancel(job.id)
        finished(job)


def options(dataset, out: Path, **overrides) -> dict:
    return train_settings(LOADED_CHECKPOINT, dataset, out, trigger_word="sks", **overrides)


def header(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def tensors(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def test_a_lora_from_the_loaded_checkpoint_names_it_and_appears_in_the_lora_tab(
    loaded, webui, sks_dataset, tmp_path, start_train
):
    from lib_sdtrain.host import webui as adapter

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sks --w 64 --h 64 --s 2 --d 1\n")
    job = start_train(options(sks_dataset, tmp_path / "out", max_train_steps=4, sample_prompts=str(prompts)))
    snap = finished(job)

    assert snap["status"] == DONE, snap["error"]
    assert loaded.moves == [webui.devices.cpu, webui.shared.device]  # off the GPU for training, then back
    assert webui.shared.parallel_processing_allowed is True and webui.shared.state.job == ""
    result = snap["result"]
    lora = adapter.lora_dir() / "sks.safetensors"
    assert result["registered"] == str(lora) and result["prompt"] == "<lora:sks:0.8>"
    assert set(result["registered_files"]) == {str(lora), str(lora.with_suffix(".preview.png")),
                                               str(lora.with_suffix(".json"))}  # fmt: skip
    meta = header(lora)
    info = loaded.sd_checkpoint_info
    assert meta["ss_sd_model_name"] == "tiny.safetensors"
    assert meta["ss_sd_model_hash"] == info.hash and meta["ss_new_sd_model_hash"] == info.sha256
    assert not any(LOADED_CHECKPOINT in value for value in meta.values())
    assert "ss_training_finished_at" in meta and meta["ss_training_comment"] == "None"
    assert header(Path(result["output"])) == meta  # the same file as in the output folder
    card = json.loads(lora.with_suffix(".json").read_text())
    assert card["activation text"] == "sks" and card["sd version"] == "SD1" and card["preferred weight"] == 0.8
    assert card["negative text"] == "" and card["notes"] == ""
    assert "4 steps" in card["description"] and "4 images" in card["description"]
    assert "dim 8, alpha 8" in card["description"] and "tiny.safetensors" in card["description"]
    assert lora.with_suffix(".preview.png").read_bytes() == Path(result["samples"][-1]).read_bytes()
    assert "sks" in webui.networks.available_networks  # the Lora list was rescanned
    assert not list(adapter.lora_dir().glob("*-state"))


def test_an_sdxl_lora_from_the_loaded_sdxl_checkpoint_gives_the_model_back_untouched(
    loaded_sdxl, webui, sks_dataset, tmp_path, start_train
):
    """The loaded SDXL (SGM layout, both embedders behind the WebUI's wrappers) trains a LoRA: kohya's SDXL names
    and metadata, an SDXL card; the WebUI's weights leave the GPU, come back and are not changed."""
    from lib_sdtrain.host import webui as adapter

    before = {k: v.clone() for k, v in loaded_sdxl.state_dict().items()}
    job = start_train(options(sks_dataset, tmp_path / "out", max_train_steps=2, network_train_unet_only=True))
    snap = finished(job)

    assert snap["status"] == DONE, snap["error"]
    assert loaded_sdxl.moves == [webui.devices.cpu, webui.shared.device]
    after = loaded_sdxl.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    lora = adapter.lora_dir() / "sks.safetensors"
    meta = header(lora)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_sd_model_name"] == "tiny-xl.safetensors"
    assert json.loads(lora.with_suffix(".json").read_text())["sd version"] == "SDXL"
    with safe_open(str(lora), "pt") as f:
        assert any(k.startswith("lora_unet_input_blocks_") for k in f.keys())  # noqa: SIM118 (not a dict)


def test_cancel_gives_the_model_back_and_a_generation_waits_for_training(
    loaded, webui, sks_dataset, tmp_path, start_train
):
    from lib_sdtrain.host import webui as adapter

    job = start_train(options(sks_dataset, tmp_path / "out", max_train_steps=100_000), task_id=TASK)
    wait_for(lambda: job.done >= 2, what="two steps")
    # While training: the model is in RAM, the WebUI's progress bar shows the training job.
    assert loaded.moves == [webui.devices.cpu]
    state = webui.shared.state
    assert state.job == "SD-Train: Training" and state.job_count == 100_000 and state.job_no >= 2
    assert webui.progress.current_task == TASK

    seen_by_generation = {}

    def generation():  # txt2img as wrap_gradio_gpu_call runs it
        with webui.call_queue.queue_lock:
            seen_by_generation.update(moves=list(loaded.moves), job=state.job, at=time.monotonic())

    worker = threading.Thread(target=generation)
    worker.start()
    time.sleep(0.3)
    assert seen_by_generation == {}  # it waits behind training
    runner().cancel(job.id)
    snap = finished(job)
    worker.join(10)

    assert snap["status"] == CANCELLED
    assert seen_by_generation["moves"] == [webui.devices.cpu, webui.shared.device]  # the model was back first
    assert seen_by_generation["job"] == ""
    lora = adapter.lora_dir() / "sks.safetensors"
    assert f"Added to {lora.parent} as sks.safetensors" in snap["error"]
    meta = header(lora)
    step = int(meta["ss_steps"])
    assert meta["ss_training_comment"] == f"cancelled at step {step} of 100000"
    assert "ss_training_finished_at" not in meta
    assert f"Cancelled at step {step} of 100000." in json.loads(lora.with_suffix(".json").read_text())["description"]


@pytest.mark.parametrize("fail_at", [3, 1], ids=["after-a-save", "before-any-save"])
def test_an_error_gives_the_model_back_and_registers_the_last_save(
    loaded, webui, sks_dataset, tmp_path, start_train, monkeypatch, fail_at
):
    from lib_sdtrain.host import webui as adapter
    from lib_sdtrain.train.loop import Trainer

    after_step = Trainer._after_step

    def failing(self):
        after_step(self)
        if self.position.step == fail_at:
            raise RuntimeError("the GPU fell over")

    monkeypatch.setattr(Trainer, "_after_step", failing)
    snap = finished(start_train(options(sks_dataset, tmp_path / "out", max_train_steps=10, save_every_n_steps=2)))

    assert snap["status"] == FAILED and "the GPU fell over" in snap["error"]
    assert loaded.moves == [webui.devices.cpu, webui.shared.device]
    assert webui.call_queue.queue_lock.acquire(blocking=False)
    webui.call_queue.queue_lock.release()
    lora = adapter.lora_dir() / "sks.safetensors"
    if fail_at == 1:
        assert not lora.exists() and "Added to" not in snap["error"]
        return
    meta = header(lora)
    assert meta["ss_steps"] == "2"  # the step-2 save, the last good one
    assert meta["ss_training_comment"] == "failed at step 3 of 10 (the GPU fell over); this is its last save"
    assert "ss_training_finished_at" not in meta
    assert (meta["sshs_model_hash"], meta["sshs_legacy_hash"]) == model_hashes(tensors(lora), meta)
    assert "Failed at step 3 of 10" in json.loads(lora.with_suffix(".json").read_text())["description"]


def test_a_full_fine_tune_goes_to_the_checkpoint_list(loaded, webui, sks_dataset, tmp_path, start_train):
    from lib_sdtrain.host import webui as adapter

    settings = options(sks_dataset, tmp_path / "out", max_train_steps=2, output_name="tiny-ft", learning_rate=1e-5)
    del settings["network_module"]
    snap = finished(start_train(settings))

    assert snap["status"] == DONE, snap["error"]
    checkpoint = adapter.checkpoints_dir() / "tiny-ft.safetensors"
    assert snap["result"]["registered"] == str(checkpoint) and snap["result"]["prompt"] is None
    assert "tiny-ft.safetensors" in [info.name for info in webui.sd_models.checkpoints_list.values()]
    card = json.loads(checkpoint.with_suffix(".json").read_text())
    assert set(card) == {"description", "sd version", "notes"} and card["description"].startswith("Fine-tuned")
    assert not adapter.lora_dir().exists() or not list(adapter.lora_dir().iterdir())


def test_intermediate_saves_follow_only_with_the_setting(loaded, webui, sks_dataset, tmp_path, start_train):
    from lib_sdtrain.host import webui as adapter

    webui.shared.opts.data.update(sdtrain_copy_intermediate=True, sdtrain_lora_subfolder="sd-train")
    snap = finished(start_train(options(sks_dataset, tmp_path / "out", max_train_steps=4, save_every_n_steps=2,
                                        save_state=True)))  # fmt: skip

    assert snap["status"] == DONE, snap["error"]
    folder = adapter.lora_dir() / "sd-train"
    assert sorted(p.name for p in folder.iterdir()) == ["sks-step00000002.safetensors", "sks.json", "sks.safetensors"]
    assert Path(snap["result"]["state_dir"]).is_dir()  # state folders stay in the output folder


# --- refused before the job starts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("situation", "message"),
    [
        ("sd3", r"is SD3"),
        ("medvram", r"--medvram.*Choose the checkpoint's file instead \(.*tiny\.safetensors\)"),
        ("lowvram", r"--lowvram.*restart the WebUI without --lowvram"),
        ("nothing loaded", r"No checkpoint is loaded in the WebUI yet"),
    ],
    ids=["sd3", "medvram", "lowvram", "nothing-loaded"],
)
def test_what_cannot_train_is_refused_on_the_base_model_field(loaded, webui, sks_dataset, tmp_path, situation, message):
    if situation == "sd3":
        loaded.is_sd1 = False
        setattr(loaded, f"is_{situation}", True)
    elif situation == "nothing loaded":
        webui.sd_models.model_data.set_sd_model(None)
    else:
        setattr(webui.shared.cmd_opts, situation, True)
    before = len(runner().jobs())

    with pytest.raises(InputError, match=message) as refused:
        runner().start("train", options(sks_dataset, tmp_path / "out"))

    assert refused.value.field == "pretrained_model_name_or_path"
    assert len(runner().jobs()) == before and loaded.moves == []


def test_outside_the_webui_there_is_no_loaded_checkpoint(sks_dataset, tmp_path):
    with pytest.raises(InputError, match="no loaded checkpoint outside the WebUI") as refused:
        runner().start("train", options(sks_dataset, tmp_path / "out"))
    assert refused.value.field == "pretrained_model_name_or_path"
    assert standalone.loaded_model_problem()
