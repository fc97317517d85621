"""kohya's dynamo_backend: the training forward through torch.compile, with a fallback where compiling fails."""

from __future__ import annotations

import pytest
import torch

from lib_sdtrain.errors import ConfigError
from lib_sdtrain.train.loop import Trainer, train
from lib_sdtrain.utils.progress import CallbackProgress
from tests.train.test_training import config_for


@pytest.mark.slow  # tracing the UNet takes half a minute on two cores; the fallback and refusal tests stay default
def test_the_eager_backend_trains_through_torch_compile_with_the_same_losses(tiny_sd_dir, sks_dataset, tmp_path):
    compiled = Trainer(config_for(tiny_sd_dir, sks_dataset, tmp_path / "a", max_train_steps=2, dynamo_backend="EAGER"),
                       None, None)  # fmt: skip
    result = compiled.run()
    assert compiled.unet_forward is not compiled.model.unet  # the compiled wrapper trained
    plain = train(config_for(tiny_sd_dir, sks_dataset, tmp_path / "b", max_train_steps=2))
    assert result.losses == pytest.approx(plain.losses, rel=1e-5)


def test_a_backend_that_fails_to_compile_falls_back_with_a_message(tiny_sd_dir, sks_dataset, tmp_path, monkeypatch):
    def failing_compile(module, backend):
        def forward(*args, **kwargs):
            raise RuntimeError("backend 'inductor' needs a C++ compiler")

        return forward

    monkeypatch.setattr(torch, "compile", failing_compile)
    progress = CallbackProgress()
    config = config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=2, dynamo_backend="inductor")
    assert train(config, progress=progress).steps == 2
    assert any("torch.compile with dynamo_backend inductor failed" in m for m in progress.messages)


def test_an_unknown_backend_is_refused_before_the_model_loads(tiny_sd_dir, sks_dataset, tmp_path):
    with pytest.raises(ConfigError, match="dynamo_backend 'nvfuser9' is not available"):
        Trainer(config_for(tiny_sd_dir, sks_dataset, tmp_path, dynamo_backend="nvfuser9"), None, None)
