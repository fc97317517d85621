"""fp16 loss scaling (issue 9, bug 1) and kohya's full_fp16 / full_bf16 (issue 11).

accelerate makes its GradScaler only on CUDA, and this machine has none; the fp16 tests give the run's Accelerator a
CPU GradScaler (torch.amp's, the same class) and fp16 autocast, which is what accelerate sets up on a GPU. Everything
else is the real loop on a real tiny model.
"""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from lib_sdtrain.errors import ConfigError
from lib_sdtrain.train import loop
from lib_sdtrain.train.loop import Trainer, train
from tests.train.test_training import config_for

INIT_SCALE = 2.0**16


class Fp16OnCpu:
    """Makes each run's Accelerator: fp16 autocast and a CPU GradScaler; with `scaling` off, a plain fp32 one."""

    def __init__(self) -> None:
        self.scaling = True
        self.made: list[Accelerator] = []

    def __call__(self, config) -> Accelerator:
        loop._reset_accelerate_state()
        accelerator = Accelerator(mixed_precision="fp16" if self.scaling else "no", cpu=True)
        if self.scaling:
            accelerator.native_amp = True
            accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
        self.made.append(accelerator)
        return accelerator


@pytest.fixture
def fp16_on_cpu(monkeypatch) -> Fp16OnCpu:
    make = Fp16OnCpu()
    monkeypatch.setattr(loop, "_make_accelerator", make)
    return make


@pytest.fixture
def clip_norms(monkeypatch) -> list[float]:
    """The gradient norms that clipping measured."""
    norms: list[float] = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters, max_norm, *args, **kwargs):
        norm = clip(parameters, max_norm, *args, **kwargs)
        norms.append(float(norm))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    return norms


def test_fp16_gradients_are_unscaled_before_clipping(tiny_sd_dir, sks_dataset, tmp_path, fp16_on_cpu, clip_norms):
    settings = {"max_train_steps": 3, "max_grad_norm": 1.0}
    train(config_for(tiny_sd_dir, sks_dataset, tmp_path / "scaled", **settings))
    scaled = list(clip_norms)
    assert fp16_on_cpu.made[0].scaler.get_scale() == INIT_SCALE  # no overflow: every step was taken

    clip_norms.clear()
    fp16_on_cpu.scaling = False  # the same run in fp32, unscaled
    train(config_for(tiny_sd_dir, sks_dataset, tmp_path / "plain", **settings))
    assert len(scaled) == len(clip_norms) == 3
    # Clipping saw the true gradients, not gradients x65536.
    assert scaled == pytest.approx(clip_norms, rel=0.05)


def test_an_overflowing_fp16_step_is_skipped_and_training_goes_on(
    tiny_sd_dir, sks_dataset, tmp_path, fp16_on_cpu, monkeypatch
):
    setup = Trainer.setup

    def setup_with_overflow(self) -> None:
        setup(self)
        self.params[0].register_hook(lambda grad: grad * float("inf"))  # this run's gradients overflow

    monkeypatch.setattr(Trainer, "setup", setup_with_overflow)
    trainer = Trainer(config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=1), None, None)
    result = trainer.run()

    assert result.steps == 1
    assert trainer.last_step_skipped
    assert trainer.accelerator.scaler.get_scale() == INIT_SCALE / 2  # the scaler backed off
    assert trainer.lr_scheduler.last_epoch == 0  # the schedule waits for a real step
    saved = load_file(result.output)
    ups = [v for k, v in saved.items() if k.endswith("lora_up.weight")]
    assert ups and all(torch.count_nonzero(v) == 0 for v in ups)  # no update reached the weights: nothing is NaN
    assert all(torch.isfinite(v).all() for v in saved.values())


def test_the_fp16_scaler_state_is_saved_and_restored(tiny_sd_dir, sks_dataset, tmp_path, fp16_on_cpu):
    config = config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=2, save_state=True)
    result = train(config)
    assert (result.state_dir / "scaler.safetensors").is_file()

    resumed = Trainer(config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=3, resume=str(result.state_dir)),
                      None, None)  # fmt: skip
    resumed.setup()
    assert resumed.accelerator.scaler.get_scale() == INIT_SCALE


def test_full_bf16_stores_the_trained_lora_in_bf16_and_trains(tiny_sd_dir, sks_dataset, tmp_path):
    config = config_for(tiny_sd_dir, sks_dataset, tmp_path, mixed_precision="bf16", full_bf16=True, max_train_steps=3)
    trainer = Trainer(config, None, None)
    trainer.setup()
    assert {p.dtype for p in trainer.params} == {torch.bfloat16}
    assert "trained weights in bfloat16" in trainer.summary()
    before = [p.detach().clone() for p in trainer.params]
    trainer.run()
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, trainer.params, strict=True))


def test_full_bf16_fine_tune_stores_the_unet_in_bf16(tiny_sd_dir, sks_dataset, tmp_path):
    config = config_for(tiny_sd_dir, sks_dataset, tmp_path, mixed_precision="bf16", full_bf16=True, network_module=None)
    trainer = Trainer(config, None, None)
    trainer.setup()
    assert {p.dtype for p in trainer.model.unet.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize(("key", "precision"), [("full_fp16", "bf16"), ("full_bf16", "no"), ("full_fp16", "no")])
def test_full_half_needs_its_mixed_precision(tiny_sd_dir, sks_dataset, tmp_path, key, precision):
    with pytest.raises(ConfigError, match=f"{key} needs mixed_precision"):
        config_for(tiny_sd_dir, sks_dataset, tmp_path, mixed_precision=precision, **{key: True})
