"""Training on tiny models: it learns (LoRA and full fine-tune), resumes exactly, and fails cleanly."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from lib_sdtrain.errors import Cancelled, ConfigError, DatasetError, SDTrainError
from lib_sdtrain.models.loading import load_sd_model
from lib_sdtrain.network.kohya_file import load_lora
from lib_sdtrain.network.lora import LoRANetwork, NetworkSpec
from lib_sdtrain.train import text
from lib_sdtrain.train.loop import Trainer, TrainingDiverged, shard_batches, train
from lib_sdtrain.train.settings import load_config
from lib_sdtrain.utils.progress import CallbackProgress
from tests.train.conftest import target_latent, train_settings


def config_for(tiny_sd_dir, sks_dataset, tmp_path, **overrides):
    return load_config(None, train_settings(tiny_sd_dir, sks_dataset, tmp_path / "out", **overrides))


@torch.no_grad()
def eval_loss(model, prompt: str = "sks") -> float:
    """Noise-prediction error on the training latent at fixed noise and timesteps."""
    scheduler = model.noise_scheduler()
    generator = torch.Generator().manual_seed(123)
    latents = target_latent().expand(16, 4, 8, 8)
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.linspace(50, 950, 16).long()
    states = text.encode(model.text_encoder, text.tokenize(model.tokenizer, [prompt] * 16))
    pred = model.unet(scheduler.add_noise(latents, noise, timesteps), timesteps, encoder_hidden_states=states).sample
    return float(torch.nn.functional.mse_loss(pred, noise))


@torch.no_grad()
def generate_latent(model, prompt: str) -> torch.Tensor:
    """A deterministic 20-step DDIM generation in latent space (no VAE, whose random tiny weights distort colour)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(model.noise_scheduler().config, set_alpha_to_one=False)
    scheduler.set_timesteps(20)
    latents = torch.randn((4, 4, 8, 8), generator=torch.Generator().manual_seed(7))
    states = text.encode(model.text_encoder, text.tokenize(model.tokenizer, [prompt] * 4))
    for t in scheduler.timesteps:
        latents = scheduler.step(model.unet(latents, t, encoder_hidden_states=states).sample, t, latents).prev_sample
    return latents


def distance_to_data(latents: torch.Tensor) -> float:
    return float((latents - target_latent()).pow(2).mean().sqrt())


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_lora_learns_the_concept_and_the_file_carries_it(tiny_sd_dir, sks_dataset, tmp_path, mixed_precision):
    """Under bf16 the frozen base is stored in bf16 (issue 11); the LoRA must learn as well as in fp32."""
    base = load_sd_model(tiny_sd_dir)
    loss_before = eval_loss(base)
    sks_before, photo_before = generate_latent(base, "sks"), generate_latent(base, "a photo")

    config = config_for(tiny_sd_dir, sks_dataset, tmp_path, mixed_precision=mixed_precision, max_train_steps=60,
                        learning_rate=6e-3)  # fmt: skip
    result = train(config)
    assert result.steps == 60 and result.output.is_file()
    assert sum(result.losses[-20:]) / 20 < sum(result.losses[:20]) / 20

    # Load the saved file into a fresh copy of the base model, as a user would.
    network = LoRANetwork(base.unet, base.text_encoder, NetworkSpec(rank=8, alpha=8))
    network.load_kohya_state_dict(load_lora(result.output)[0])
    network.attach()
    loss_after = eval_loss(base)
    sks_after, photo_after = generate_latent(base, "sks"), generate_latent(base, "a photo")

    assert loss_after < 0.7 * loss_before, (loss_before, loss_after)
    moved = distance_to_data(sks_after) / distance_to_data(sks_before)
    assert moved < 0.75, f"'sks' generations moved only to {moved:.0%} of their distance to the data"
    # The concept is tied to its trigger word: another prompt changes less.
    assert (sks_after - sks_before).abs().mean() > (photo_after - photo_before).abs().mean()


def test_full_fine_tune_learns_and_saves_a_loadable_checkpoint(tiny_sd_dir, sks_dataset, tmp_path):
    base = load_sd_model(tiny_sd_dir)
    loss_before, sks_before = eval_loss(base), generate_latent(base, "sks")
    config = config_for(tiny_sd_dir, sks_dataset, tmp_path, network_module=None, learning_rate=2e-4, max_train_steps=80)
    result = train(config)
    tuned = load_sd_model(result.output, tokenizer=tiny_sd_dir / "tokenizer")
    assert eval_loss(tuned) < 0.7 * loss_before
    assert distance_to_data(generate_latent(tuned, "sks")) < 0.75 * distance_to_data(sks_before)


def test_resume_gives_the_same_weights_as_a_straight_run(tiny_sd_dir, sks_dataset, tmp_path):
    straight = train(config_for(tiny_sd_dir, sks_dataset, tmp_path / "a", max_train_steps=10, network_dropout=0.1))
    first = train(
        config_for(
            tiny_sd_dir, sks_dataset, tmp_path / "b", max_train_steps=10, network_dropout=0.1,
            save_every_n_steps=5, save_state=True,
        )
    )  # fmt: skip
    state = tmp_path / "b" / "out" / "sks-step00000005-state"
    assert state.is_dir() and first.steps == 10
    resumed = train(
        config_for(tiny_sd_dir, sks_dataset, tmp_path / "c", max_train_steps=10, network_dropout=0.1, resume=str(state))
    )
    a, b = load_lora(straight.output)[0], load_lora(resumed.output)[0]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from the straight run"
    assert resumed.losses == straight.losses[5:]


def test_cancel_keeps_a_usable_lora_and_a_resumable_state(tiny_sd_dir, sks_dataset, tmp_path):
    def on_event(event, payload):
        if event == "advance" and payload["done"] == 3:
            progress.cancel()

    progress = CallbackProgress(on_event)
    with pytest.raises(Cancelled, match="Cancelled at step 3"):
        train(config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=8), progress=progress)
    out = tmp_path / "out"
    state, _ = load_lora(out / "sks.safetensors")
    assert any(v.abs().sum() > 0 for k, v in state.items() if "lora_up" in k)  # trained, not the zero init
    resumed = train(config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=8, resume=str(out / "sks-state")))
    assert resumed.steps == 8 and len(resumed.losses) == 5


def test_nan_loss_stops_and_keeps_the_last_good_save(tiny_sd_dir, sks_dataset, tmp_path, monkeypatch):
    real_loss = Trainer._loss

    def loss_that_explodes(self, prepared):
        loss = real_loss(self, prepared)
        return loss * float("nan") if self.position.step >= 4 else loss

    monkeypatch.setattr(Trainer, "_loss", loss_that_explodes)
    config = config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=10, save_every_n_steps=2)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 5.*sks-step00000004\.safetensors"):
        train(config)
    good, _ = load_lora(tmp_path / "out" / "sks-step00000004.safetensors")
    assert all(torch.isfinite(v).all() for v in good.values())
    assert not (tmp_path / "out" / "sks.safetensors").exists()


def test_out_of_memory_names_the_settings_to_lower(tiny_sd_dir, sks_dataset, tmp_path, monkeypatch):
    def no_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    config = config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=3)
    trainer = Trainer(config, None, None)
    monkeypatch.setattr(trainer.model.unet, "forward", no_memory)
    with pytest.raises(SDTrainError, match=r"Out of memory\. Lower train_batch_size"):
        trainer.run()


def test_config_errors_are_clear(tiny_sd_dir, sks_dataset, tmp_path):
    toml = tmp_path / "lora.toml"
    toml.write_text(
        '[model_arguments]\npretrained_model_name_or_path = "x"\n[optimizer_arguments]\nlearning_rat = 1e-4\n'
    )
    with pytest.raises(ConfigError, match=r"Unknown setting .learning_rat.\. Did you mean .learning_rate."):
        load_config(toml)
    with pytest.raises(DatasetError, match="train_data_dir not found"):
        train(config_for(tiny_sd_dir, sks_dataset, tmp_path, train_data_dir=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="mixed_precision fp16 needs a GPU"):
        train(config_for(tiny_sd_dir, sks_dataset, tmp_path, mixed_precision="fp16", max_train_steps=1))


def test_two_runs_with_different_precision_in_one_process(tiny_sd_dir, sks_dataset, tmp_path):
    """A WebUI process trains many times; accelerate's one-configuration-per-process rule must not get in the way."""
    assert train(config_for(tiny_sd_dir, sks_dataset, tmp_path / "1", max_train_steps=2)).steps == 2
    run = train(config_for(tiny_sd_dir, sks_dataset, tmp_path / "2", max_train_steps=2, mixed_precision="bf16"))
    assert run.steps == 2


def test_cli_trains_from_the_tutorials_toml_layout(tiny_sd_dir, sks_dataset, tmp_path):
    from safetensors import safe_open

    from lib_sdtrain.main import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# samples\nsks --n blurry --w 64 --h 64 --d 5 --s 2 --l 3\n")
    toml = tmp_path / "config_file.toml"
    toml.write_text(
        f"""
[model_arguments]
pretrained_model_name_or_path = "{tiny_sd_dir}"
[additional_network_arguments]
network_module = "networks.lora"
network_dim = 4
network_alpha = 1
[optimizer_arguments]
optimizer_type = "AdamW"
learning_rate = 1e-4
lr_scheduler = "cosine"
lr_warmup_steps = 1
[dataset_arguments]
train_data_dir = "{sks_dataset["dir"]}"
in_json = "{sks_dataset["meta"]}"
resolution = "64,64"
shuffle_caption = true
[training_arguments]
output_dir = "{tmp_path / "out"}"
output_name = "tutorial"
train_batch_size = 2
max_train_steps = 4
xformers = true
[sample_prompt_arguments]
sample_every_n_steps = 2
sample_prompts = "{prompts}"
"""
    )
    assert main(["train", "--config_file", str(toml), "--max_train_steps", "3"]) == 0
    output = tmp_path / "out" / "tutorial.safetensors"
    with safe_open(str(output), framework="pt") as f:
        meta = f.metadata()
    assert meta["ss_network_dim"] == "4" and meta["ss_steps"] == "3" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_output_name"] == "tutorial" and "ss_training_finished_at" in meta
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    sample_dir = tmp_path / "out" / "sample"
    assert len(list(sample_dir.glob("tutorial_000002_00_*_5.png"))) == 1  # after step 2
    assert len(list(sample_dir.glob("tutorial_e0*_00_*_5.png"))) == 1  # at the end


def test_data_parallel_with_two_cpu_processes(tiny_sd_dir, sks_dataset, tmp_path):
    """torchrun starts two ranks (gloo on CPU); each trains on its share of the batches, gradients are averaged,
    and both end with the same weights (the run checks and reports it). 5 batches per epoch: the leftover one is
    trained too (3 steps per process, as kohya's accelerate loader), and the metadata counts both processes."""
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    toml = tmp_path / "ddp.toml"
    settings = train_settings(tiny_sd_dir, sks_dataset, tmp_path / "out", max_train_epochs=1, train_batch_size=8)
    toml.write_text("\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in settings.items()) + "\n")
    result = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", "29517", "-m", "lib_sdtrain", "train",
         "--config_file", str(toml)],
        capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes, weights in sync" in result.stdout + result.stderr
    metadata = safe_open(str(tmp_path / "out" / "sks.safetensors"), "pt").metadata()
    assert metadata["ss_num_batches_per_epoch"] == "3" and metadata["ss_steps"] == "3"
    assert metadata["ss_total_batch_size"] == "16"


def test_data_parallel_shares_cover_every_batch_and_are_equal():
    batches = [[i] for i in range(5)]
    shares = [shard_batches(batches, 2, rank) for rank in range(2)]
    assert shares == [[[0], [2], [4]], [[1], [3], [0]]]  # the last round is completed with the first batch
    assert shard_batches(batches, 1, 0) == batches
    assert [shard_batches([[7]], 3, rank) for rank in range(3)] == [[[7]]] * 3


def test_sd2_v_prediction_from_image_folders_with_the_other_options(tiny_sd2_dir, tmp_path):
    """SD2 (v-prediction), images encoded on the fly from a DreamBooth folder, and the options not covered above:
    gradient accumulation, min-SNR, noise offset, LoCon, clip skip, 150 tokens, gradient checkpointing, bf16,
    TensorBoard logs and epoch-based saving."""
    from PIL import Image
    from safetensors import safe_open

    folder = tmp_path / "data" / "3_sks"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (64, 64), (200, 20 * i, 20)).save(folder / f"{i}.png")
    (folder / "0.caption").write_text("sks, red")
    settings = {
        "pretrained_model_name_or_path": str(tiny_sd2_dir), "train_data_dir": str(tmp_path / "data"),
        "resolution": "64,64", "min_bucket_reso": 64, "network_module": "networks.lora", "network_dim": 4,
        "conv_dim": 2, "conv_alpha": 1, "train_batch_size": 1, "gradient_accumulation_steps": 3, "max_train_epochs": 2,
        "min_snr_gamma": 5.0, "noise_offset": 0.05, "clip_skip": 2, "max_token_length": 150,
        "gradient_checkpointing": True, "mixed_precision": "bf16", "logging_dir": str(tmp_path / "logs"),
        "save_every_n_epochs": 1, "output_dir": str(tmp_path / "out"), "output_name": "v", "learning_rate": 1e-3,
        "cache_latents": False,
    }  # fmt: skip
    result = train(load_config(None, settings))
    assert result.steps == 6  # 9 images a epoch / accumulation 3 = 3 optimizer steps, 2 epochs
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert (tmp_path / "out" / "v-000001.safetensors").is_file()
    with safe_open(str(result.output), framework="pt") as f:
        meta = f.metadata()
        ups = {k: f.get_tensor(k) for k in f.keys() if k.endswith("lora_up.weight")}  # noqa: SIM118
    assert any("resnets" in k for k in ups)  # LoCon convolutions
    # clip_skip 2 uses the output of the penultimate text layer, so the last layer (1 of 0-1) rightly stays as is
    untrained = [k for k, v in ups.items() if not v.abs().sum() and "encoder_layers_1_" not in k]
    assert not untrained, f"{len(untrained)} modules got no gradient under gradient checkpointing: {untrained[:3]}"
    assert meta["ss_v2"] == "True" and meta["ss_base_model_version"] == "sd_v2_v"
    assert meta["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
    assert meta["ss_cache_latents"] == "False" and meta["ss_clip_skip"] == "2"
    assert list((tmp_path / "logs").glob("v*/events.out.tfevents.*"))
