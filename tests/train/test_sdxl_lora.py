"""SDXL LoRA training (train/loop.py with an SDXL base): the conditioning is kohya's (both encoders' penultimate
states side by side, the pooled text, the six size ids), the LoRA learns the concept, and its file is kohya's:
SGM module names, lora_te1_/lora_te2_, SDXL metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lib_sdtrain.demo.tiny_models import write_tiny_sdxl_diffusers_model
from lib_sdtrain.errors import ConfigError, UnsupportedModelError
from lib_sdtrain.models.loading import load_sd_model
from lib_sdtrain.models.saving import sd_model_to_ldm
from lib_sdtrain.network.kohya_file import load_lora
from lib_sdtrain.train import data, text
from lib_sdtrain.train.loop import Trainer, train
from lib_sdtrain.train.settings import load_config
from tests.train import kohya_reference as kohya
from tests.train.conftest import target_latent

SDXL_SCALING = 0.13025


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory) -> Path:
    return write_tiny_sdxl_diffusers_model(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture
def sks_sdxl(tmp_path) -> dict[str, Path]:
    """Four 64 px images whose cached latents (unscaled, as kohya stores them) are the concept, with kohya's
    original_size and crop_ltrb; captioned "sks"."""
    folder = tmp_path / "data"
    folder.mkdir()
    metadata = {}
    for i in range(4):
        Image.new("RGB", (64, 64), (220, 30, 30)).save(folder / f"red{i}.png")
        np.savez(folder / f"red{i}.npz", latents=(target_latent() / SDXL_SCALING).numpy(),
                 original_size=np.array([64, 64]), crop_ltrb=np.array([0, 0, 64, 64]))  # fmt: skip
        metadata[f"red{i}"] = {"caption": "sks", "train_resolution": [64, 64]}
    (folder / "meta_lat.json").write_text(json.dumps(metadata))
    return {"dir": folder, "meta": folder / "meta_lat.json"}


def _config(sdxl_dir, dataset, tmp_path, **overrides):
    settings = {
        "pretrained_model_name_or_path": str(sdxl_dir), "train_data_dir": str(dataset["dir"]),
        "in_json": str(dataset["meta"]), "dataset_repeats": 10, "resolution": "64,64",
        "network_module": "networks.lora", "network_dim": 8, "network_alpha": 8, "learning_rate": 6e-3,
        "max_train_steps": 60, "train_batch_size": 4, "output_dir": str(tmp_path / "out"), "output_name": "sks",
        "seed": 0, "save_precision": "float", **overrides,
    }  # fmt: skip
    return load_config(None, settings)


def _condition(model, prompt: str, count: int):
    ids = text.tokenize(model.tokenizer, [prompt] * count)
    ids_2 = text.tokenize(model.tokenizer_2, [prompt] * count)
    states, pooled = text.encode_sdxl(
        model.text_encoder, model.text_encoder_2, ids, ids_2, model.tokenizer_2.eos_token_id
    )
    time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64]] * count)
    return {"encoder_hidden_states": states, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}


@torch.no_grad()
def eval_loss(model, prompt: str = "sks") -> float:
    scheduler = model.noise_scheduler()
    generator = torch.Generator().manual_seed(123)
    latents = target_latent().expand(16, 4, 8, 8)
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.linspace(50, 950, 16).long()
    pred = model.unet(scheduler.add_noise(latents, noise, timesteps), timesteps, **_condition(model, prompt, 16))
    return float(torch.nn.functional.mse_loss(pred.sample, noise))


@torch.no_grad()
def generate_latent(model, prompt: str) -> torch.Tensor:
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(model.noise_scheduler().config, set_alpha_to_one=False)
    scheduler.set_timesteps(20)
    latents = torch.randn((4, 4, 8, 8), generator=torch.Generator().manual_seed(7))
    condition = _condition(model, prompt, 4)
    for t in scheduler.timesteps:
        latents = scheduler.step(model.unet(latents, t, **condition).sample, t, latents).prev_sample
    return latents


def test_the_conditioning_is_kohyas(sdxl_dir):
    """The states and pooled text are kohya's get_hidden_states_sdxl's, for one chunk and for 225 tokens; the size
    ids are kohya's dataset's, and SDXL's UNet embeds them as kohya's get_size_embeddings does."""
    model = load_sd_model(sdxl_dir)
    captions = ["sks, a red square on a plain ground", "a photo"]
    for length in (75, 225):
        ids = text.tokenize(model.tokenizer, captions, length)
        ids_2 = text.tokenize(model.tokenizer_2, captions, length)
        model.text_encoder_2.config.eos_token_id = 2  # as SDXL's own config.json says: the tokenizer's EOS counts
        states, pooled = text.encode_sdxl(
            model.text_encoder, model.text_encoder_2, ids, ids_2, model.tokenizer_2.eos_token_id
        )
        first, second, pool = kohya.get_hidden_states_sdxl(
            None if length == 75 else length, ids, ids_2, model.tokenizer, model.tokenizer_2, model.text_encoder,
            model.text_encoder_2,
        )  # fmt: skip
        assert torch.allclose(states, torch.cat([first, second], dim=-1), atol=1e-6)
        assert torch.allclose(pooled, pool, atol=1e-6)

    for original, crop, bucket, flipped in [((96, 64), (16, 0, 80, 64), (64, 64), False),
                                            ((50, 80), (0, 4, 40, 68), (40, 64), True)]:  # fmt: skip
        item = data.TrainItem("x", "", bucket, image_path=Path("unused.png"))
        path = Path(__file__).parent / "x.npz"
        try:
            np.savez(path, latents=np.zeros((4, 1, 1)), original_size=np.array(original), crop_ltrb=np.array(crop))
            ours = data.size_conditioning(data.TrainItem("x", "", bucket, latents_path=path), flipped)
        finally:
            path.unlink()
        original_hw, crop_tl, target_hw = kohya.size_ids(original, crop, bucket, flipped)
        assert ours == (*original_hw, *crop_tl, *target_hw), (item, ours)

    time_ids = torch.tensor([[96.0, 64, 0, 16, 64, 64], [80, 50, 4, 0, 64, 40]])
    diffusers_embedding = model.unet.add_time_proj(time_ids.flatten()).reshape(2, -1)
    kohya_embedding = kohya.get_size_embeddings(time_ids[:, :2], time_ids[:, 2:4], time_ids[:, 4:], "cpu")
    # the tiny UNet embeds each number in 8 dimensions (SDXL: 256); kohya's code is the same at any width
    kohya_small = torch.cat([kohya.get_timestep_embedding(time_ids[:, i : i + 2], 8) for i in (0, 2, 4)], dim=1)
    assert kohya_embedding.shape == (2, 6 * 256)
    assert torch.allclose(diffusers_embedding, kohya_small, atol=1e-6)


def test_an_sdxl_lora_learns_the_concept_and_its_file_is_kohyas(sdxl_dir, sks_sdxl, tmp_path):
    base = load_sd_model(sdxl_dir)
    loss_before = eval_loss(base)
    sks_before, photo_before = generate_latent(base, "sks"), generate_latent(base, "a photo")

    # LoCon: the tiny SDXL has attention at one level only, too little for a plain LoRA to learn in a few steps
    result = train(_config(sdxl_dir, sks_sdxl, tmp_path, conv_dim=8, conv_alpha=8))
    assert result.steps == 60 and sum(result.losses[-20:]) < sum(result.losses[:20])

    state, metadata = load_lora(result.output)
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0" and metadata["ss_v2"] == "False"
    assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    names = {key.split(".")[0] for key in state}
    # kohya's rule for SDXL: lora_unet_ + the module's SGM path, lora_te1_/lora_te2_ + its transformers path
    sgm_modules = {k.removeprefix("model.diffusion_model.").rsplit(".", 1)[0].replace(".", "_")
                   for k in sd_model_to_ldm(base) if k.startswith("model.diffusion_model.")}  # fmt: skip
    te_modules = {n.replace(".", "_") for n, _ in base.text_encoder.named_modules()}
    te2_modules = {n.replace(".", "_") for n, _ in base.text_encoder_2.named_modules()}
    unet = {n.removeprefix("lora_unet_") for n in names if n.startswith("lora_unet_")}
    assert unet and unet <= sgm_modules and any(n.startswith("input_blocks_") for n in unet)
    assert {"input_blocks_1_0_in_layers_2", "input_blocks_1_0_emb_layers_1", "input_blocks_2_0_op"} <= unet  # LoCon
    assert any(n.startswith("lora_te1_text_model_encoder_layers_") for n in names)
    assert any(n.startswith("lora_te2_text_model_encoder_layers_") for n in names)
    assert {n.removeprefix("lora_te1_") for n in names if n.startswith("lora_te1_")} <= te_modules
    assert {n.removeprefix("lora_te2_") for n in names if n.startswith("lora_te2_")} <= te2_modules
    assert len(names) == len(unet) + sum(n.startswith(("lora_te1_", "lora_te2_")) for n in names)

    from lib_sdtrain.network.lora import LoRANetwork, NetworkSpec

    spec = NetworkSpec(rank=8, alpha=8, conv_rank=8, conv_alpha=8)
    network = LoRANetwork(base.unet, base.text_encoder, spec, base.text_encoder_2, base.lora_unet_names())
    network.load_kohya_state_dict(state)
    network.attach()
    loss_after = eval_loss(base)
    sks_after, photo_after = generate_latent(base, "sks"), generate_latent(base, "a photo")
    assert loss_after < 0.7 * loss_before, (loss_before, loss_after)
    distance = lambda latents: float((latents - target_latent()).pow(2).mean().sqrt())  # noqa: E731
    moved = distance(sks_after) / distance(sks_before)
    assert moved < 0.75, f"'sks' generations moved only to {moved:.0%} of their distance to the data"
    assert (sks_after - sks_before).abs().mean() > (photo_after - photo_before).abs().mean()


def test_what_sdxl_training_does_not_take_is_refused_before_it_loads_data(sdxl_dir, sks_sdxl, tmp_path):
    full_with_text = {"network_module": None, "train_text_encoder": True}
    with pytest.raises(UnsupportedModelError, match=r"training its two text encoders too .* is not supported yet"):
        Trainer(_config(sdxl_dir, sks_sdxl, tmp_path, **full_with_text), None, None)
    with pytest.raises(ConfigError, match=r"clip_skip = 2 is for SD 1\.x/2\.x"):
        Trainer(_config(sdxl_dir, sks_sdxl, tmp_path, clip_skip=2), None, None)
    folder = tmp_path / "folder" / "5_sks"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 64), "red").save(folder / "a.png")
    steps_48 = {"train_data_dir": str(folder.parent), "in_json": None, "enable_bucket": True, "bucket_reso_steps": 48}
    with pytest.raises(ConfigError, match=r"bucket_reso_steps = 48: SDXL's buckets are multiples of 32"):
        Trainer(_config(sdxl_dir, sks_sdxl, tmp_path, **steps_48), None, None)
    # kohya's cache_text_encoder_outputs, refused where kohya refuses it
    with pytest.raises(ConfigError, match=r"cache_text_encoder_outputs needs frozen text encoders"):
        Trainer(_config(sdxl_dir, sks_sdxl, tmp_path, cache_text_encoder_outputs=True), None, None).setup()
    unet_only = {"cache_text_encoder_outputs": True, "network_train_unet_only": True}
    with pytest.raises(ConfigError, match=r"needs captions that stay the same"):
        Trainer(_config(sdxl_dir, sks_sdxl, tmp_path, shuffle_caption=True, **unet_only), None, None).setup()


def test_unet_only_with_cached_text_and_image_folder_latents(sdxl_dir, tmp_path):
    """network_train_unet_only: the captions are encoded once (both encoders, the pooled text too) and the
    image-folder latents cached; the size ids come from the images; the file has only lora_unet_ modules."""
    images = tmp_path / "folder" / "5_sks"
    images.mkdir(parents=True)
    for i, size in enumerate([(64, 64), (96, 64)]):
        Image.new("RGB", size, (200, 40, 40)).save(images / f"img{i}.png")
        (images / f"img{i}.caption").write_text("sks")
    config = load_config(None, {
        "pretrained_model_name_or_path": str(sdxl_dir), "train_data_dir": str(tmp_path / "folder"),
        "resolution": "64,64", "enable_bucket": True, "min_bucket_reso": 32, "max_bucket_reso": 128,
        "bucket_reso_steps": 32, "network_module": "networks.lora", "network_train_unet_only": True,
        "cache_latents": True, "cache_text_encoder_outputs_to_disk": True, "max_train_steps": 4,
        "train_batch_size": 1, "output_dir": str(tmp_path / "out"),
        "output_name": "folder", "seed": 1,
    })  # fmt: skip
    trainer = Trainer(config, None, None)
    result = trainer.run()
    assert trainer.text_cache is not None and all(c.pooled is not None for c in trainer.text_cache.values())
    assert result.steps == 4 and all(np.isfinite(result.losses))
    state, _ = load_lora(result.output)
    assert state and all(k.startswith("lora_unet_") for k in state)
    wide = next(item for item in trainer.items if item.image_path.name == "img1.png")
    assert data.size_conditioning(wide, False)[:2] == (64, 96)  # the original height, width
    assert load_file(str(result.output)).keys() == state.keys()


def test_an_sdxl_unet_fine_tune_learns_and_saves_an_sgm_file_and_a_diffusers_folder(sdxl_dir, sks_sdxl, tmp_path):
    base = load_sd_model(sdxl_dir)
    loss_before = eval_loss(base)
    config = _config(sdxl_dir, sks_sdxl, tmp_path, network_module=None, learning_rate=2e-4, max_train_steps=80)
    tuned = load_sd_model(train(config).output, tokenizer=sdxl_dir)  # the single file the WebUI's list loads
    assert tuned.version == "sdxl" and eval_loss(tuned) < 0.7 * loss_before
    assert all(
        torch.equal(a, b)
        for a, b in zip(tuned.text_encoder_2.parameters(), base.text_encoder_2.parameters(), strict=True)
    )  # fmt: skip  (frozen)

    folder = train(_config(sdxl_dir, sks_sdxl, tmp_path / "d", network_module=None, max_train_steps=2,
                           save_model_as="diffusers_safetensors")).output  # fmt: skip
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
    assert load_sd_model(folder).version == "sdxl"


def test_a_run_continues_from_an_sdxl_lora_file_with_its_dims(sdxl_dir, sks_sdxl, tmp_path):
    """network_weights (+ dim_from_weights): a kohya-layout SDXL LoRA (lora_unet_ SGM names, lora_te1_/lora_te2_)
    is read back module for module, at its own ranks, and training goes on from it."""
    first = train(_config(sdxl_dir, sks_sdxl, tmp_path / "a", max_train_steps=2, network_dim=4, network_alpha=2))
    saved, _ = load_lora(first.output)
    config = _config(sdxl_dir, sks_sdxl, tmp_path / "b", max_train_steps=1, network_weights=str(first.output),
                     dim_from_weights=True)  # fmt: skip
    trainer = Trainer(config, None, None)
    trainer.setup()
    loaded = trainer.network.kohya_state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k].float(), saved[k].float()) for k in saved)


def test_sdxl_sample_prompts_are_weighted_and_may_be_long(sdxl_dir, sks_sdxl, tmp_path):
    """(word:1.5) weights and prompts over 75 tokens reach both SDXL encoders, as for SD 1.x; unweighted, one
    chunk equals the training conditioning; the samples render."""
    from lib_sdtrain.train.prompt_weights import weighted_prompt_states_sdxl

    model = load_sd_model(sdxl_dir)
    plain, pooled = weighted_prompt_states_sdxl(model, ["a red square"])
    ids = text.tokenize(model.tokenizer, ["a red square"])
    ids_2 = text.tokenize(model.tokenizer_2, ["a red square"])
    states, pool = text.encode_sdxl(
        model.text_encoder, model.text_encoder_2, ids, ids_2, model.tokenizer_2.eos_token_id
    )
    assert torch.allclose(plain, states, atol=1e-5) and torch.allclose(pooled, pool, atol=1e-5)
    weighted, _ = weighted_prompt_states_sdxl(model, ["a (red:1.5) square"])
    assert weighted.shape == plain.shape and not torch.allclose(weighted, plain)
    long, long_pooled = weighted_prompt_states_sdxl(model, [" ".join(["red square"] * 60), ""])
    assert long.shape[:2] == (2, 3 * 77) and long_pooled.shape[0] == 2  # the negative lines up with the prompt

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a (red:1.4) square --n blue --w 64 --h 64 --s 2 --d 3\n")
    result = train(_config(sdxl_dir, sks_sdxl, tmp_path, max_train_steps=1, sample_prompts=str(prompts),
                           sample_every_n_steps=1))  # fmt: skip
    samples = sorted((tmp_path / "out" / "sample").glob("*.png"))
    assert samples and Image.open(samples[-1]).size == (64, 64) and result.steps == 1
