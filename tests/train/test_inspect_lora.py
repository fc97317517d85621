"""`sdtrain inspect` on LoRA files (issue 10, item 15): type, dim/alpha, modules, base model, training summary."""

from __future__ import annotations

from lib_sdtrain.main import main
from lib_sdtrain.models.loading import load_sd_model
from lib_sdtrain.network.kohya_file import save_lora
from lib_sdtrain.network.lora import LoRANetwork, NetworkSpec
from lib_sdtrain.train.loop import train
from lib_sdtrain.train.settings import load_config
from tests.train.conftest import train_settings


def inspect_output(path, capsys) -> str:
    assert main(["inspect", str(path)]) == 0
    return capsys.readouterr().out


def test_inspect_describes_a_trained_locon(tiny_sd_dir, sks_dataset, tmp_path, capsys):
    settings = train_settings(
        tiny_sd_dir, sks_dataset, tmp_path / "out", max_train_steps=2, network_args=["conv_dim=4", "conv_alpha=2"]
    )
    result = train(load_config(None, settings))
    text = inspect_output(result.output, capsys)
    lines = dict(line.split(":", 1) for line in text.splitlines())
    assert lines["type"].strip() == "LoCon (LoRA with 3x3 convolutions)"
    assert lines["dim / alpha"].strip() == "8 / 8; convolutions 4 / 2"
    unet, te = text_counts(lines["modules"])
    assert unet > 0 and te > 0
    assert lines["base model"].strip() == "sd_v1, stable-diffusion-v1/lora, trained on tiny-sd1"
    assert lines["steps"].strip() == "2"
    assert lines["epochs"].strip() == "1"
    assert lines["images"].strip() == "40 per epoch (with repeats)"
    assert lines["resolution"].strip() == "(64, 64)"
    assert lines["learning rate"].strip().startswith("0.002")
    assert lines["network args"].strip() == "conv_dim=4, conv_alpha=2.0"  # as ss_network_args holds it
    assert "(fp32)" not in lines["file"] and "fp32" in lines["file"]
    assert "comment" not in lines  # kohya's "None" (no training_comment) is not shown as a comment


def text_counts(modules_line: str) -> tuple[int, int]:
    """(UNet, text encoder) from `N (U UNet, T text encoder)`."""
    inner = modules_line.split("(", 1)[1].rstrip(")")
    unet, te = (int(part.split()[0]) for part in inner.split(","))
    return unet, te


def test_inspect_shows_per_module_ranges_and_the_comment(tiny_sd_dir, tmp_path, capsys):
    model = load_sd_model(tiny_sd_dir)
    small = LoRANetwork(model.unet, model.text_encoder, NetworkSpec(rank=4, alpha=2)).kohya_state_dict()
    large = LoRANetwork(model.unet, model.text_encoder, NetworkSpec(rank=8, alpha=8)).kohya_state_dict()
    mixed = {k: v for k, v in small.items() if k.startswith("lora_te")}
    mixed |= {k: v for k, v in large.items() if k.startswith("lora_unet")}
    path = save_lora(mixed, tmp_path / "mixed.safetensors", {"ss_v2": "False", "ss_training_comment": "hand-made"})
    text = inspect_output(path, capsys)
    assert "type:          LoRA\n" in text and "fp16" in text
    assert "dim / alpha:   4-8 (varies per module) / 2-8 (varies per module)" in text
    assert "base model:    sd_v1" in text
    assert "comment:       hand-made" in text and "steps:" not in text
