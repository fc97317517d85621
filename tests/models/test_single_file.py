"""Single-file checkpoints: load -> save -> load is exact, our conversion agrees with diffusers' own loader, and the
model behaves the same whichever format it came from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lib_sdtrain.models.loading import load_sd_model, sd_model_from_ldm
from lib_sdtrain.models.saving import save_sd_checkpoint
from lib_sdtrain.models.sd_model import SDModel

COMPONENTS = ("unet", "vae", "text_encoder")


def assert_same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def assert_same_model(a: SDModel, b: SDModel) -> None:
    for name in COMPONENTS:
        assert_same_weights(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("sd2", [False, True], ids=["sd1", "sd2"])
def test_single_file_round_trip_is_exact(sd2, tiny_sd_checkpoint, tiny_sd2_checkpoint, tiny_sd_dir, tmp_path):
    checkpoint = tiny_sd2_checkpoint if sd2 else tiny_sd_checkpoint
    first = load_sd_model(checkpoint, tokenizer=tiny_sd_dir / "tokenizer")
    resaved = save_sd_checkpoint(first, tmp_path / "again.safetensors")
    second = load_sd_model(resaved, tokenizer=tiny_sd_dir / "tokenizer")

    assert_same_model(first, second)
    original, again = load_file(checkpoint), load_file(resaved)
    assert original.keys() == again.keys()
    assert all(torch.equal(original[k], again[k]) for k in original)
    assert second.version == ("sd2" if sd2 else "sd1")


@pytest.mark.parametrize("sd2", [False, True], ids=["sd1", "sd2"])
def test_diffusers_folder_survives_single_file(sd2, tiny_sd_dir, tiny_sd2_dir, tiny_sd_checkpoint, tiny_sd2_checkpoint):
    folder, checkpoint = (tiny_sd2_dir, tiny_sd2_checkpoint) if sd2 else (tiny_sd_dir, tiny_sd_checkpoint)
    from_folder = load_sd_model(folder)
    from_file = load_sd_model(checkpoint, tokenizer=folder / "tokenizer")
    assert_same_model(from_folder, from_file)
    assert from_file.prediction_type == from_folder.prediction_type == ("v_prediction" if sd2 else "epsilon")
    assert from_file.text_encoder.config.hidden_act == from_folder.text_encoder.config.hidden_act


@pytest.mark.parametrize("sd2", [False, True], ids=["sd1", "sd2"])
def test_conversion_matches_diffusers_single_file_loader(
    sd2, tiny_sd_dir, tiny_sd2_dir, tiny_sd_checkpoint, tiny_sd2_checkpoint
):
    """diffusers' own from_single_file is the reference for the ldm -> diffusers direction."""
    folder, checkpoint = (tiny_sd2_dir, tiny_sd2_checkpoint) if sd2 else (tiny_sd_dir, tiny_sd_checkpoint)
    peer = StableDiffusionPipeline.from_single_file(
        str(checkpoint), config=str(folder), local_files_only=True, safety_checker=None
    )
    ours = load_sd_model(checkpoint, tokenizer=folder / "tokenizer")
    for name in COMPONENTS:
        assert_same_weights(getattr(peer, name), getattr(ours, name))


def test_generation_is_identical_from_either_format(tiny_sd_dir, tiny_sd_checkpoint):
    def generate(model: SDModel):
        pipe = StableDiffusionPipeline(
            vae=model.vae,
            text_encoder=model.text_encoder,
            tokenizer=model.tokenizer,
            unet=model.unet,
            scheduler=StableDiffusionPipeline.from_pretrained(tiny_sd_dir).scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        generator = torch.Generator().manual_seed(1)
        return pipe(
            "a photo of sks", num_inference_steps=3, height=64, width=64, generator=generator, output_type="np"
        ).images

    a = generate(load_sd_model(tiny_sd_dir))
    b = generate(load_sd_model(tiny_sd_checkpoint, tokenizer=tiny_sd_dir / "tokenizer"))
    assert a.shape == (1, 64, 64, 3)
    assert (a == b).all()


def test_extra_tensors_and_schedule_survive(tiny_sd_checkpoint, tiny_sd_dir, tmp_path):
    state = load_file(tiny_sd_checkpoint)
    betas = torch.linspace(0.001**0.5, 0.02**0.5, 500, dtype=torch.float64) ** 2
    state["betas"] = betas
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77.0)[None]  # a float one
    path = tmp_path / "with-extras.safetensors"
    save_file(state, str(path))

    model = load_sd_model(path, tokenizer=tiny_sd_dir / "tokenizer")
    scheduler = model.noise_scheduler()
    assert scheduler.config.num_train_timesteps == 500
    assert scheduler.config.beta_start == pytest.approx(0.001)
    assert scheduler.config.beta_end == pytest.approx(0.02)
    assert torch.allclose(scheduler.betas.double(), betas, rtol=1e-5)
    # Position ids are never taken from the file (some merges carry broken float ones) but are written back as found.
    assert model.text_encoder.text_model.embeddings.position_ids.dtype == torch.int64

    again = load_file(save_sd_checkpoint(model, tmp_path / "resaved.safetensors"))
    assert torch.equal(again["betas"], betas)
    assert again["cond_stage_model.transformer.text_model.embeddings.position_ids"].dtype == torch.float32


def test_save_precision_and_model_spec(tiny_sd_dir, tmp_path):
    model = load_sd_model(tiny_sd_dir)
    path = save_sd_checkpoint(model, tmp_path / "half.safetensors", dtype=torch.float16, metadata={"note": "hi"})
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    assert dtypes == {torch.float16, torch.int64}  # int64: the text encoder's position ids
    assert meta["modelspec.architecture"] == "stable-diffusion-v1"
    assert meta["modelspec.prediction_type"] == "epsilon"
    assert meta["note"] == "hi"
    assert not list(tmp_path.glob(".*.tmp")), "temporary file left behind"


def test_prediction_type_from_metadata_and_sidecar_yaml(tiny_sd_checkpoint, tiny_sd_dir, tmp_path):
    tokenizer = tiny_sd_dir / "tokenizer"
    state = load_file(tiny_sd_checkpoint)
    tagged = tmp_path / "tagged.safetensors"
    save_file(state, str(tagged), metadata={"modelspec.prediction_type": "v"})
    assert load_sd_model(tagged, tokenizer=tokenizer).prediction_type == "v_prediction"

    plain = tmp_path / "plain.safetensors"
    save_file(state, str(plain))
    (tmp_path / "plain.yaml").write_text('model:\n  params:\n    parameterization: "v"\n    scale_factor: 0.13\n')
    model = load_sd_model(plain, tokenizer=tokenizer)
    assert model.prediction_type == "v_prediction"
    assert model.vae_scaling_factor == pytest.approx(0.13)
    assert load_sd_model(plain, tokenizer=tokenizer, prediction_type="epsilon").prediction_type == "epsilon"


def test_ckpt_loads_through_safe_unpickling(tiny_sd_checkpoint, tiny_sd_dir, tmp_path):
    state = load_file(tiny_sd_checkpoint)
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": state, "global_step": 470000, "epoch": 6}, path)
    from_ckpt = load_sd_model(path, tokenizer=tiny_sd_dir / "tokenizer")
    assert_same_model(from_ckpt, load_sd_model(tiny_sd_checkpoint, tokenizer=tiny_sd_dir / "tokenizer"))


def test_webui_state_dict_with_tokenizer_object(tiny_sd_checkpoint, tiny_sd_dir):
    """The WebUI hands over its loaded model's ldm state dict and tokenizer object, no files involved."""
    reference = load_sd_model(tiny_sd_dir)
    model = sd_model_from_ldm(load_file(tiny_sd_checkpoint), tokenizer=reference.tokenizer, source="webui")
    assert_same_model(reference, model)
    assert model.tokenizer is reference.tokenizer


def test_dtype_argument(tiny_sd_checkpoint, tiny_sd_dir):
    model = load_sd_model(tiny_sd_checkpoint, tokenizer=tiny_sd_dir / "tokenizer", dtype=torch.bfloat16)
    assert {p.dtype for p in model.unet.parameters()} == {torch.bfloat16}


def test_tokenizer_beside_checkpoint_is_found(tiny_sd_checkpoint, tiny_sd_dir, tmp_path):
    import shutil

    shutil.copy(tiny_sd_checkpoint, tmp_path / "model.safetensors")
    shutil.copytree(tiny_sd_dir / "tokenizer", tmp_path / "tokenizer")
    model = load_sd_model(tmp_path / "model.safetensors")
    assert len(model.tokenizer) == len(load_sd_model(tiny_sd_dir).tokenizer)


def test_convert_cli_writes_a_loadable_checkpoint(tiny_sd_dir, tmp_path, capsys):
    from lib_sdtrain.main import main

    out = tmp_path / "converted.safetensors"
    assert main(["convert", str(tiny_sd_dir), str(out), "--save_precision", "fp32"]) == 0
    assert "saved" in capsys.readouterr().out
    assert_same_model(load_sd_model(tiny_sd_dir), load_sd_model(out, tokenizer=tiny_sd_dir / "tokenizer"))
    assert main(["inspect", str(out), "--tokenizer", str(tiny_sd_dir / "tokenizer")]) == 0
    assert "version:      sd1 (epsilon)" in capsys.readouterr().out


def test_model_paths_from_the_tutorial_layout_are_accepted(tiny_sd_dir):
    """`../models/SD/stable-diffusion-v1-5` in the tutorial is a diffusers folder given as a path string."""
    model = load_sd_model(str(tiny_sd_dir))
    assert isinstance(model.source, str) and Path(model.source) == tiny_sd_dir
