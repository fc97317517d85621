"""Files that are not usable SD 1.x/2.x models are refused with a message that names the problem."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from lib_sdtrain.errors import ModelLoadError, UnsupportedModelError
from lib_sdtrain.models import loading
from lib_sdtrain.models.loading import load_sd_model, load_vae


@pytest.fixture
def tokenizer(tiny_sd_dir):
    return tiny_sd_dir / "tokenizer"


def test_truncated_safetensors(tiny_sd_checkpoint, tmp_path, tokenizer):
    data = tiny_sd_checkpoint.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        load_sd_model(path, tokenizer=tokenizer)


def test_empty_and_missing_files(tmp_path, tokenizer):
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        load_sd_model(empty, tokenizer=tokenizer)
    with pytest.raises(ModelLoadError, match="not found"):
        load_sd_model(tmp_path / "nope.safetensors", tokenizer=tokenizer)
    with pytest.raises(ModelLoadError, match="not a diffusers model"):
        load_sd_model(tmp_path, tokenizer=tokenizer)


def test_truncated_ckpt(tiny_sd_checkpoint, tmp_path, tokenizer):
    path = tmp_path / "cut.ckpt"
    torch.save({"state_dict": load_file(tiny_sd_checkpoint)}, path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="not a readable checkpoint"):
        load_sd_model(path, tokenizer=tokenizer)


class _Payload:
    """Unpickling this runs a command; a safe loader must refuse before that happens."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/sdtrain-pwned",))


def test_pickle_with_code_is_refused(tmp_path, tokenizer):
    marker = "/tmp/sdtrain-pwned"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "callback": _Payload()}, path)
    with pytest.raises(ModelLoadError, match=r"Refusing to load evil\.ckpt"):
        load_sd_model(path, tokenizer=tokenizer)
    assert not os.path.exists(marker)


def test_wrong_keys(tmp_path, tokenizer):
    path = tmp_path / "random.safetensors"
    save_file({"foo.weight": torch.zeros(2, 2), "bar.bias": torch.zeros(2)}, str(path))
    with pytest.raises(ModelLoadError, match=r"not a Stable Diffusion checkpoint.*bar\.bias"):
        load_sd_model(path, tokenizer=tokenizer)


def test_a_broken_sdxl_file_is_named_as_an_incomplete_sdxl(tmp_path, tokenizer):
    path = tmp_path / "sdxl.safetensors"
    save_file(
        {
            "model.diffusion_model.label_emb.0.0.weight": torch.zeros(4, 4),
            "conditioner.embedders.1.model.ln_final.weight": torch.zeros(4),
        },
        str(path),
    )
    with pytest.raises(ModelLoadError, match=r"no VAE weights|incomplete SDXL"):
        load_sd_model(path, tokenizer=tokenizer)


@pytest.mark.parametrize(("pipeline", "name"), [("StableDiffusion3Pipeline", "SD3"), ("FluxPipeline", "Flux")])
def test_other_diffusers_families_are_named(tmp_path, pipeline, name):
    folder = tmp_path / "model"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(f'{{"_class_name": "{pipeline}"}}')
    with pytest.raises(UnsupportedModelError, match=rf"is an? {name} model \(a diffusers {pipeline}\)"):
        load_sd_model(folder)


def test_lora_and_module_files_are_explained(tmp_path, tokenizer):
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 4)}, str(lora))
    with pytest.raises(ModelLoadError, match="is a LoRA"):
        load_sd_model(lora, tokenizer=tokenizer)
    unet_only = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({"down_blocks.0.resnets.0.conv1.weight": torch.zeros(4, 4)}, str(unet_only))
    with pytest.raises(ModelLoadError, match="single diffusers module"):
        load_sd_model(unet_only, tokenizer=tokenizer)


def test_incomplete_checkpoint_names_what_is_missing(tiny_sd_checkpoint, tmp_path, tokenizer):
    state = load_file(tiny_sd_checkpoint)
    del state["model.diffusion_model.out.2.weight"]
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelLoadError, match=r"model\.diffusion_model\.out\.2\.weight"):
        load_sd_model(path, tokenizer=tokenizer)


def test_shape_mismatch_is_reported(tiny_sd_checkpoint, tmp_path, tokenizer):
    state = load_file(tiny_sd_checkpoint)
    key = "first_stage_model.decoder.mid.attn_1.q.weight"
    state[key] = torch.zeros(3, 3, 1, 1)
    path = tmp_path / "bent.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelLoadError, match="does not fit the AutoencoderKL layout"):
        load_sd_model(path, tokenizer=tokenizer)


def test_missing_tokenizer_says_what_to_provide(tiny_sd_checkpoint, monkeypatch):
    monkeypatch.setitem(loading.CACHED_TOKENIZERS, "sd1", [("sdtrain-tests/not-cached", "")])
    with pytest.raises(ModelLoadError, match=r"No CLIP tokenizer found.*sdtrain-tests/not-cached"):
        load_sd_model(tiny_sd_checkpoint)


def test_tokenizer_that_does_not_fit(tiny_sd_checkpoint, tmp_path):
    from tests.tiny_models import WORDS, write_tiny_tokenizer

    big = tmp_path / "big-tokenizer"
    write_tiny_tokenizer(big, [*WORDS, *(f"extraword{i}" for i in range(200))])
    with pytest.raises(ModelLoadError, match="do not belong together"):
        load_sd_model(tiny_sd_checkpoint, tokenizer=big)


def test_unknown_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="local Hugging Face cache"):
        load_sd_model("sdtrain-tests/no-such-model")
    with pytest.raises(ModelLoadError, match="Model not found"):
        load_sd_model("./no/such/path.safetensors")


def test_load_vae_from_every_kind_of_source(tiny_sd_checkpoint, tiny_sd_dir, tmp_path):
    reference = load_vae(tiny_sd_dir).state_dict()
    standalone = tmp_path / "vae.safetensors"
    prefix = "first_stage_model."
    save_file(
        {k[len(prefix) :]: v for k, v in load_file(tiny_sd_checkpoint).items() if k.startswith(prefix)}, str(standalone)
    )
    for source in (tiny_sd_checkpoint, standalone, tiny_sd_dir / "vae"):
        state = load_vae(source).state_dict()
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[k], reference[k]) for k in reference)
