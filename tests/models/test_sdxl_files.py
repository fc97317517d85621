"""SDXL models: a diffusers SDXL folder and its SGM single file (the layout the WebUI, kohya and ComfyUI load) turn
into each other exactly, generate the same images, cache latents and are recognised as SDXL (training:
tests/train/test_sdxl_lora.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lib_sdtrain.demo.tiny_models import write_tiny_sdxl_diffusers_model
from lib_sdtrain.errors import ModelLoadError
from lib_sdtrain.generate.pipeline import build_pipeline
from lib_sdtrain.models.loading import load_sd_model, load_vae
from lib_sdtrain.models.saving import save_sd_checkpoint

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory) -> Path:
    return write_tiny_sdxl_diffusers_model(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="module")
def sdxl_file(sdxl_folder, tmp_path_factory) -> Path:
    return save_sd_checkpoint(load_sd_model(sdxl_folder), tmp_path_factory.mktemp("files") / "tiny-sdxl.safetensors")


def _same_weights(a, b) -> None:
    for name in COMPONENTS:
        left, right = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert left.keys() == right.keys(), name
        assert all(torch.equal(left[k], right[k]) for k in left), name


def test_a_diffusers_sdxl_round_trips_through_an_sgm_single_file(sdxl_folder, sdxl_file, tmp_path):
    folder_model = load_sd_model(sdxl_folder)
    assert folder_model.version == "sdxl" and folder_model.vae_scaling_factor == 0.13025
    assert folder_model.text_encoder_2 is not None and folder_model.tokenizer_2 is not None

    tensors = load_file(str(sdxl_file))
    projection = folder_model.text_encoder_2.text_projection.weight  # transformers: y = x W^T
    assert torch.equal(tensors["conditioner.embedders.1.model.text_projection"], projection.T)  # SGM: y = x P
    qkv = tensors["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"]
    assert qkv.shape[0] == 3 * folder_model.text_encoder_2.config.hidden_size  # q, k and v fused, as OpenCLIP's
    for key in (
        "model.diffusion_model.label_emb.0.0.weight",  # the pooled text + size/crop ids
        "model.diffusion_model.input_blocks.0.0.weight",
        "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
        "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
        "first_stage_model.encoder.conv_in.weight",
    ):
        assert key in tensors, key
    with safe_open(str(sdxl_file), "pt") as f:
        assert f.metadata()["modelspec.architecture"] == "stable-diffusion-xl-v1-base"

    file_model = load_sd_model(sdxl_file, tokenizer=sdxl_folder)
    assert (file_model.version, file_model.prediction_type, file_model.vae_scaling_factor) == (
        "sdxl",
        "epsilon",
        0.13025,
    )
    _same_weights(folder_model, file_model)
    assert file_model.tokenizer_2.get_vocab() == folder_model.tokenizer_2.get_vocab()

    again = load_file(str(save_sd_checkpoint(file_model, tmp_path / "again.safetensors")))
    assert again.keys() == tensors.keys() and all(torch.equal(again[k], tensors[k]) for k in tensors)


def test_the_folder_and_the_file_generate_what_diffusers_itself_generates(sdxl_folder, sdxl_file):
    from diffusers import StableDiffusionXLPipeline

    def image(pipe) -> torch.Tensor:
        out = pipe("a red square", num_inference_steps=2, height=64, width=64, output_type="np",
                   generator=torch.Generator().manual_seed(3))  # fmt: skip
        return torch.from_numpy(out.images[0])

    reference = StableDiffusionXLPipeline.from_pretrained(sdxl_folder)
    reference.set_progress_bar_config(disable=True)
    reference.scheduler = build_pipeline(load_sd_model(sdxl_folder), sampler="euler").scheduler
    expected = image(reference)
    for source in (sdxl_folder, sdxl_file):
        pipe = build_pipeline(load_sd_model(source, tokenizer=sdxl_folder), sampler="euler")
        assert type(pipe).__name__ == "StableDiffusionXLPipeline"
        assert torch.allclose(image(pipe), expected, atol=1e-6), source


def test_a_v_pred_key_makes_an_sdxl_file_v_prediction(sdxl_file, sdxl_folder, tmp_path):
    tensors = load_file(str(sdxl_file))
    v_file = tmp_path / "noob-like.safetensors"
    save_file({**tensors, "v_pred": torch.tensor([])}, str(v_file))  # NoobAI-style v-prediction marker
    assert load_sd_model(v_file, tokenizer=sdxl_folder).prediction_type == "v_prediction"
    assert load_sd_model(sdxl_file, tokenizer=sdxl_folder, prediction_type="v_prediction").v_prediction


def test_the_vae_alone_comes_with_sdxls_scale(sdxl_file):
    assert load_vae(sdxl_file).config.scaling_factor == 0.13025


def test_an_incomplete_sdxl_file_is_named(sdxl_file, tmp_path):
    tensors = {k: v for k, v in load_file(str(sdxl_file)).items() if not k.startswith("conditioner.embedders.1.")}
    save_file(tensors, str(tmp_path / "half.safetensors"))
    with pytest.raises(ModelLoadError, match=r"half\.safetensors is an incomplete SDXL checkpoint.*embedders\.1"):
        load_sd_model(tmp_path / "half.safetensors")


def test_every_weight_of_a_full_size_sdxl_has_its_place_in_the_sgm_layout():
    """The SGM key names and shapes of SDXL base 1.0, as Stability AI's own code (generative-models' DiffusionEngine,
    through ../shared/tools/make_random_sdxl.py in WebUI v1.10.1) writes them, recorded once in data/: the configs
    inferred from them are SDXL base's, and every diffusers/transformers weight maps onto one of them, shape for
    shape; only the position ids and OpenCLIP's logit_scale are left over (kept as they are)."""
    import gzip
    import json

    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from lib_sdtrain.models import configs, ldm_keys
    from lib_sdtrain.models.checkpoint_file import detect_sd_version

    data = Path(__file__).parent / "data" / "sdxl-base-sgm-shapes.json.gz"
    recorded = json.loads(gzip.decompress(data.read_bytes()))
    state = {key: torch.empty(shape, device="meta") for key, shape in recorded.items()}
    assert detect_sd_version(state) == "sdxl"
    unet_config = configs.infer_unet_config(state, "sdxl")
    assert (unet_config["block_out_channels"], unet_config["transformer_layers_per_block"]) == ([320, 640, 1280],
                                                                                               [1, 2, 10])  # fmt: skip
    assert (unet_config["cross_attention_dim"], unet_config["projection_class_embeddings_input_dim"]) == (2048, 2816)
    with init_empty_weights():
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**configs.infer_vae_config(state, configs.SDXL_VAE_SCALING_FACTOR))
        first = CLIPTextModel(configs.infer_text_config(state, "sdxl"))
        second = CLIPTextModelWithProjection(configs.infer_sdxl_text2_config(state))
    assert second.config.num_hidden_layers == 32 and second.config.projection_dim == 1280

    layout, levels = configs.unet_layout(unet_config), len(vae.config.block_out_channels)
    rules = [
        (unet, lambda k: ldm_keys.unet_ldm_ref(k, layout)),
        (vae, lambda k: ldm_keys.vae_ldm_ref(k, levels)),
        (first, lambda k: None if k == ldm_keys.POSITION_IDS_KEY else ldm_keys.sdxl_text1_ldm_ref(k)),
        (second, ldm_keys.sdxl_text2_ldm_ref),
    ]
    placed = set()
    for module, ref_of in rules:
        for key, tensor in module.state_dict().items():
            if (ref := ref_of(key)) is None:
                continue
            shape = list(recorded[ref.key])
            shape[0] //= ref.chunks
            shape = shape[::-1] if ref.transpose else shape[:2] if ref.conv1x1 and len(shape) == 4 else shape
            assert tuple(shape) == tuple(tensor.shape), (key, ref.key)
            placed.add(ref.key)
    assert sorted(set(recorded) - placed) == [
        "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
        "conditioner.embedders.1.model.logit_scale",
    ]


def test_the_generate_stage_draws_with_an_sdxl_file_and_its_lora(sdxl_file, sdxl_folder, tmp_path):
    """Generate with an SDXL file alone, then with an SDXL LoRA in kohya's layout (SGM names, lora_te1_/lora_te2_),
    which changes the image; a LoRA of another family is named as not fitting."""
    import shutil

    from lib_sdtrain.errors import SDTrainError
    from lib_sdtrain.generate.generator import GenerationRequest, Generator
    from lib_sdtrain.network.kohya_file import save_lora
    from lib_sdtrain.network.lora import LoRANetwork, NetworkSpec

    sdxl_file = Path(shutil.copy(sdxl_file, tmp_path))
    for name in ("tokenizer", "tokenizer_2"):  # a lone file's tokenizers are looked for beside it
        shutil.copytree(sdxl_folder / name, tmp_path / name)
    generator = Generator(device="cpu")
    request = GenerationRequest(model=str(sdxl_file), prompt="a red square", steps=2, width=64, height=64, seed=1)
    first, again = generator.txt2img(request)[0], generator.txt2img(request)[0]
    assert first.size == (64, 64) and first.tobytes() == again.tobytes()  # the seed gives the same image

    model = generator.model(str(sdxl_file))
    network = LoRANetwork(model.unet, model.text_encoder, NetworkSpec(rank=4, alpha=4), model.text_encoder_2,
                          model.lora_unet_names())  # fmt: skip
    for lora in network.all_loras():
        torch.nn.init.normal_(lora.lora_up.weight, std=0.5)
    state = network.kohya_state_dict()
    assert any(k.startswith("lora_te2_") for k in state) and any(k.startswith("lora_unet_input_blocks") for k in state)
    save_lora(state, tmp_path / "xl-lora.safetensors", {})
    with_lora = generator.txt2img(dataclasses.replace(request, lora_path=str(tmp_path / "xl-lora.safetensors")))[0]
    assert with_lora.tobytes() != first.tobytes()
    assert generator.txt2img(request)[0].tobytes() == first.tobytes()  # the LoRA is gone afterwards

    sd1_lora = tmp_path / "sd1.safetensors"
    sd1_name = "lora_unet_down_blocks_0_attentions_0_proj_in"  # an SD 1.x name: diffusers paths
    save_file({f"{sd1_name}.lora_down.weight": torch.zeros(1, 1), f"{sd1_name}.lora_up.weight": torch.zeros(1, 1)},
              str(sd1_lora))  # fmt: skip
    with pytest.raises(SDTrainError, match=r"sd1\.safetensors does not fit this SDXL model"):
        generator.txt2img(dataclasses.replace(request, lora_path=str(sd1_lora)))


def test_buckets_caches_latents_with_an_sdxl_files_vae(sdxl_file, sdxl_folder, tmp_path):
    """The tutorial's steps 3-4 on an SDXL model: merge, then buckets with the SDXL file; the .npz holds a draw of
    the SDXL VAE's latents and the original size and crop that SDXL's size conditioning reads."""
    import json

    import numpy as np

    from lib_sdtrain.main import main

    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (96, 64), "red").save(data / "wide.png")
    (data / "wide.caption").write_text("a red square")
    assert main(["merge", str(data), str(data / "meta_clean.json")]) == 0
    args = ["buckets", str(data), str(data / "meta_clean.json"), str(data / "meta_lat.json"), str(sdxl_file)]
    assert main([*args, "--max_resolution", "64,64", "--min_bucket_reso", "32", "--max_bucket_reso", "128",
                 "--bucket_reso_steps", "32", "--tokenizer", str(sdxl_folder)]) == 0  # fmt: skip
    bucket = json.loads((data / "meta_lat.json").read_text())["wide"]["train_resolution"]
    with np.load(data / "wide.npz") as npz:
        latents = torch.from_numpy(npz["latents"])
        assert latents.shape == (4, bucket[1] // 8, bucket[0] // 8)
        assert npz["original_size"].tolist() == [96, 64] and len(npz["crop_ltrb"]) == 4
    vae = load_vae(sdxl_file)
    pixels = torch.ones(1, 3, bucket[1], bucket[0])  # the red square: 1, -1, -1 in the VAE's range
    pixels[:, 1:] = -1
    with torch.no_grad():
        dist = vae.encode(pixels).latent_dist
    assert vae.config.scaling_factor == 0.13025
    assert ((latents - dist.mean[0]) / dist.std[0]).abs().max() < 5  # a draw from this VAE's encoding of the image
