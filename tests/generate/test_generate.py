"""Generation with an optional LoRA: reproducible images, LoRA hooks that leave the model exactly as it was, the same
result as the training network, and clear refusals of LoRAs that do not fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lib_sdtrain.errors import Cancelled, SDTrainError
from lib_sdtrain.generate import GenerationRequest, Generator, apply_lora, list_loras
from lib_sdtrain.models.loading import load_sd_model
from lib_sdtrain.network.kohya_file import load_lora, save_lora
from lib_sdtrain.network.lora import LoRANetwork, NetworkSpec

SPEC = NetworkSpec(rank=4, alpha=2, conv_rank=2, conv_alpha=1)  # LoCon: 3x3 convolutions at another rank


def make_network(model, seed: int = 0) -> LoRANetwork:
    network = LoRANetwork(model.unet, model.text_encoder, SPEC)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lora in network.all_loras():
            for p in (lora.lora_down.weight, lora.lora_up.weight):  # non-zero up weights: a LoRA that does something
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return network


@pytest.fixture(scope="module")
def lora_file(tiny_sd_dir, tmp_path_factory) -> Path:
    network = make_network(load_sd_model(tiny_sd_dir))
    path = tmp_path_factory.mktemp("loras") / "test-lora.safetensors"
    return save_lora(network.kohya_state_dict(), path, {"ss_network_dim": "4"}, save_precision="float")


@pytest.fixture(scope="module")
def generator() -> Generator:
    return Generator(device="cpu")


def request(model_dir: Path, **changes) -> GenerationRequest:
    settings = {"prompt": "a photo of sks", "steps": 3, "width": 64, "height": 64, "seed": 7, "batch_count": 2}
    return GenerationRequest(model=str(model_dir), **{**settings, **changes})


def pixels(images: list[Image.Image]) -> list[bytes]:
    return [image.tobytes() for image in images]


def outputs(model) -> tuple[torch.Tensor, torch.Tensor]:
    """UNet and text-encoder outputs on fixed inputs."""
    with torch.no_grad():
        ids = model.tokenizer("a red cat", padding="max_length", return_tensors="pt").input_ids
        text = model.text_encoder(ids).last_hidden_state
        latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        return model.unet(latents, 500, encoder_hidden_states=text).sample, text


def test_same_seed_same_images_and_the_lora_changes_them(tiny_sd_dir, lora_file, generator):
    base = generator.txt2img(request(tiny_sd_dir))
    assert len(base) == 2 and base[0].size == (64, 64) and pixels(base)[0] != pixels(base)[1]  # seeds 7 and 8
    assert pixels(generator.txt2img(request(tiny_sd_dir))) == pixels(base)
    with_lora = generator.txt2img(request(tiny_sd_dir, lora_path=str(lora_file), lora_weight=0.8))
    assert all(a != b for a, b in zip(pixels(with_lora), pixels(base), strict=True))
    assert pixels(generator.txt2img(request(tiny_sd_dir, lora_path=str(lora_file), lora_weight=0))) == pixels(base)
    assert pixels(generator.txt2img(request(tiny_sd_dir))) == pixels(base)  # the LoRA is gone again
    ddim = generator.txt2img(request(tiny_sd_dir, sampler="ddim", batch_count=1))
    assert pixels(ddim) != pixels(base)[:1]
    info = with_lora[1].info["parameters"]
    assert info.startswith("a photo of sks\n") and "Seed: 8" in info and "Lora: test-lora:0.8" in info
    assert generator.model(str(tiny_sd_dir)) is generator.model(str(tiny_sd_dir))  # loaded once


def test_the_model_is_restored_exactly(tiny_sd_dir, lora_file):
    model = load_sd_model(tiny_sd_dir)
    weights = {k: v.clone() for k, v in model.unet.state_dict().items()}
    unet_before, text_before = outputs(model)
    with apply_lora(model, lora_file, 0.8) as applied:
        assert applied.modules == len(load_lora(lora_file)[0]) // 3
        unet_with, text_with = outputs(model)
    assert not torch.allclose(unet_with, unet_before) and not torch.allclose(text_with, text_before)
    unet_after, text_after = outputs(model)
    assert torch.equal(unet_after, unet_before) and torch.equal(text_after, text_before)
    assert all(torch.equal(v, weights[k]) for k, v in model.unet.state_dict().items())  # never written to
    assert not any(m._forward_hooks for m in [*model.unet.modules(), *model.text_encoder.modules()])


def test_apply_lora_equals_the_training_network(tiny_sd_dir, lora_file):
    model = load_sd_model(tiny_sd_dir)
    with apply_lora(model, lora_file, 0.8):
        unet_hooked, text_hooked = outputs(model)
    network = LoRANetwork(model.unet, model.text_encoder, SPEC)
    network.load_kohya_state_dict(load_lora(lora_file)[0])
    network.set_multiplier(0.8)
    network.attach()
    unet_network, text_network = outputs(model)
    network.detach()
    assert torch.allclose(text_hooked, text_network, atol=1e-5, rtol=0)
    assert torch.allclose(unet_hooked, unet_network, atol=1e-5, rtol=0)


def test_img2img_returns_the_requested_size(tiny_sd_dir, lora_file, generator):
    init = Image.new("RGB", (40, 24), (200, 30, 30))
    req = request(tiny_sd_dir, width=72, height=44, steps=4, batch_count=1, lora_path=str(lora_file))
    images = generator.img2img(req, init, strength=0.5)
    assert [i.size for i in images] == [(72, 40)]  # rounded down to multiples of 8
    assert "Denoising strength: 0.5" in images[0].info["parameters"]
    assert pixels(generator.img2img(req, init, strength=0.5)) == pixels(images)
    with pytest.raises(SDTrainError, match="leave no step"):
        generator.img2img(req, init, strength=0.1)


def test_cancel_stops_generation_and_restores_the_model(tiny_sd_dir, lora_file, generator):
    from lib_sdtrain.utils.progress import CallbackProgress

    progress = CallbackProgress()
    progress.cancel()
    with pytest.raises(Cancelled):
        generator.txt2img(request(tiny_sd_dir, lora_path=str(lora_file)), progress)
    model = generator.model(str(tiny_sd_dir))
    assert not any(m._forward_hooks for m in model.unet.modules())


def assert_refused(model, path: Path, match: str) -> None:
    with pytest.raises(SDTrainError, match=match), apply_lora(model, path, 1.0):
        pass


def test_loras_for_other_models_are_refused(tiny_sd_dir, lora_file, tmp_path):
    model = load_sd_model(tiny_sd_dir)
    sdxl = {}
    for name in (
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "lora_te1_text_model_encoder_layers_0_mlp_fc1",
    ):
        sdxl[f"{name}.lora_down.weight"] = torch.zeros(4, 640)
        sdxl[f"{name}.lora_up.weight"] = torch.zeros(640, 4)
        sdxl[f"{name}.alpha"] = torch.tensor(4.0)
    path = save_lora(sdxl, tmp_path / "xl.safetensors", {"ss_base_model_version": "sdxl_base_v1-0"})
    assert_refused(model, path, r"does not fit this SD1 model: 2 of its 2 modules.*sdxl_base_v1-0")

    state = load_lora(lora_file)[0]
    key = next(k for k in state if k.startswith("lora_te_") and k.endswith("lora_down.weight"))
    state[key] = torch.zeros(4, 1024)  # an SD2 text encoder is wider
    save_file(state, str(tmp_path / "sd2.safetensors"))
    assert_refused(model, tmp_path / "sd2.safetensors", "SD1 and SD2 LoRAs share names but not sizes")

    loha = {"lora_te_text_model_encoder_layers_0_mlp_fc1.hada_w1_a": torch.zeros(2, 2), key: torch.zeros(1)}
    save_file(loha, str(tmp_path / "loha.safetensors"))
    assert_refused(model, tmp_path / "loha.safetensors", "not LyCORIS LoHa/LoKr")
    assert not any(m._forward_hooks for m in model.text_encoder.modules())  # refused before any change


def test_list_loras_reads_headers_only(lora_file, tmp_path):
    (tmp_path / "sub").mkdir()
    lora = tmp_path / "sub" / "b-lora.safetensors"
    lora.write_bytes(lora_file.read_bytes())
    (tmp_path / "a-lora.safetensors").write_bytes(lora_file.read_bytes())
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(1)}, str(tmp_path / "checkpoint.safetensors"))
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "notes.txt").write_text("lora_ keys")
    assert list_loras(tmp_path) == [tmp_path / "a-lora.safetensors", lora]
    assert list_loras(tmp_path / "missing") == []
