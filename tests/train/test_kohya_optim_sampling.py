"""kohya's optimizer_args, schedule settings, sample-image options and save options do what they do in kohya."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from lib_sdtrain.errors import ConfigError
from lib_sdtrain.train import text
from lib_sdtrain.train.loop import Trainer, train
from lib_sdtrain.train.optim import make_lr_scheduler, make_optimizer, parse_optimizer_args
from lib_sdtrain.train.outputs import MINIMUM_KEYS
from lib_sdtrain.train.prompt_weights import parse_attention, weighted_prompt_states
from lib_sdtrain.train.sampling import parse_prompt_line, read_prompt_file, sample_scheduler
from lib_sdtrain.train.settings import config_from_dict, load_config, validate_config
from tests.train.conftest import train_settings

REQUIRED = {"pretrained_model_name_or_path": "base.safetensors", "train_data_dir": "data"}


def config_for(tiny_sd_dir, sks_dataset, tmp_path, **overrides):
    return load_config(None, train_settings(tiny_sd_dir, sks_dataset, tmp_path / "out", **overrides))


def settings(**values):
    config = config_from_dict({**REQUIRED, **values})
    validate_config(config)
    return config


def lrs_over(config, total: int = 100) -> list[float]:
    """The learning rate at each of `total` steps (of a base rate of 1) under the config's schedule."""
    built = make_optimizer(config.optimizer_type, [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1.0}], 1.0,
                           config.optimizer_args)  # fmt: skip
    scheduler = make_lr_scheduler(config, built, total)
    rates = []
    for _ in range(total):
        rates.append(scheduler.get_last_lr()[0])
        built.optimizer.step()
        scheduler.step()
    return rates


# --- optimizer_args ---------------------------------------------------------------------------------------------------


def test_optimizer_args_reach_the_optimizer_and_ss_optimizer(tiny_sd_dir, sks_dataset, tmp_path):
    config = config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=1,
                        optimizer_args=["weight_decay=0.01", "betas=0.9,0.99"])  # fmt: skip
    trainer = Trainer(config, None, None)
    trainer.setup()
    group = trainer.optimizer.param_groups[0]
    assert group["weight_decay"] == 0.01 and group["betas"] == (0.9, 0.99)
    assert trainer.optimizer_description == "torch.optim.adamw.AdamW(weight_decay=0.01,betas=(0.9, 0.99))"
    result = train(config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=1))
    with safe_open(str(result.output), "pt") as f:
        assert f.metadata()["ss_optimizer"] == "torch.optim.adamw.AdamW"  # no args: the bare class path, as kohya


def test_optimizer_args_are_read_as_kohya_reads_them():
    assert parse_optimizer_args(["relative_step=False", "eps=1e-8", "d_coef=2", "name='x'"]) == {
        "relative_step": False, "eps": 1e-8, "d_coef": 2, "name": "x"}  # fmt: skip
    for bad in ("weight_decay", "relative_step=false", "a=b=c"):
        with pytest.raises(ConfigError, match="optimizer_args"):
            settings(optimizer_args=[bad])


def test_adafactor_uses_kohyas_relative_step_and_its_schedule():
    config = settings(optimizer_type="Adafactor", learning_rate=1e-3, lr_scheduler="cosine")
    params = [torch.nn.Parameter(torch.zeros(2))]
    built = make_optimizer(config.optimizer_type, [{"params": params, "lr": 5e-4}], 1e-3, config.optimizer_args)
    assert built.optimizer.defaults["relative_step"] is True and built.optimizer.defaults["lr"] is None
    assert "lr" not in built.optimizer.param_groups[0] or built.optimizer.param_groups[0]["lr"] is None
    assert built.description == "transformers.optimization.Adafactor(relative_step=True)"
    assert type(make_lr_scheduler(config, built, 10)).__name__ == "AdafactorSchedule"
    with pytest.raises(ConfigError, match="takes no warm-up"):
        settings(optimizer_type="Adafactor", lr_warmup_steps=10)
    fixed = settings(optimizer_type="Adafactor", optimizer_args=["relative_step=False", "scale_parameter=False"])
    built = make_optimizer(fixed.optimizer_type, [{"params": params, "lr": 5e-4}], 1e-3, fixed.optimizer_args)
    assert built.optimizer.param_groups[0]["lr"] == 5e-4
    with pytest.raises(ConfigError, match="adafactor needs optimizer_type Adafactor"):
        settings(lr_scheduler="adafactor")


# --- schedules ----------------------------------------------------------------------------------------------------


def test_lr_warmup_steps_below_1_is_a_ratio_of_the_run():
    warm = {"lr_scheduler": "constant_with_warmup"}
    assert settings(**warm, lr_warmup_steps="10%").lr_warmup_steps == 0.1
    assert settings(**warm, lr_warmup_steps=10.0).lr_warmup_steps == 10
    assert isinstance(settings(**warm, lr_warmup_steps=10.0).lr_warmup_steps, int)
    rates = lrs_over(settings(lr_scheduler="constant_with_warmup", lr_warmup_steps=0.25), 100)
    assert rates[0] == 0 and rates[12] == pytest.approx(12 / 25) and rates[25] == 1.0
    with pytest.raises(ConfigError, match="lr_warmup_steps"):
        settings(lr_warmup_steps=1.5)


def test_constant_with_a_warmup_is_refused_as_kohya_does():
    with pytest.raises(ConfigError, match="lr_scheduler constant takes no warm-up"):
        settings(lr_scheduler="constant", lr_warmup_steps=5)
    with pytest.raises(ConfigError, match="piecewise_constant"):
        settings(lr_scheduler="piecewise_constant")


def test_num_cycles_power_and_min_lr_ratio_shape_the_schedule():
    restarts = lrs_over(settings(lr_scheduler="cosine_with_restarts", lr_scheduler_num_cycles=2))
    assert restarts[49] < 0.01 and restarts[50] == 1.0  # the second wave starts half-way
    poly = lrs_over(settings(lr_scheduler="polynomial", lr_scheduler_power=2.0))
    assert poly[50] == pytest.approx(0.25, abs=1e-6)
    min_lr = lrs_over(settings(lr_scheduler="cosine_with_min_lr", lr_scheduler_min_lr_ratio=0.1))
    assert min_lr[50] == pytest.approx(0.55) and min(min_lr) >= 0.1 and min_lr[-1] == pytest.approx(0.1, abs=1e-3)
    with pytest.raises(ConfigError, match="lr_scheduler_min_lr_ratio"):
        settings(lr_scheduler="cosine_with_min_lr")
    wsd = lrs_over(settings(lr_scheduler="warmup_stable_decay", lr_warmup_steps=10, lr_decay_steps=0.5))
    assert wsd[5] == 0.5 and wsd[10] == wsd[49] == 1.0 and wsd[75] == pytest.approx(0.5) and wsd[99] < 0.01
    inverse = lrs_over(settings(lr_scheduler="inverse_sqrt", lr_warmup_steps=4))
    assert inverse[4] == 1.0 and inverse[16] == pytest.approx(0.5)


# --- sampling -------------------------------------------------------------------------------------------------


def test_prompt_flags_are_kohyas_case_insensitive_ones():
    sample = parse_prompt_line("a photo of sks --W 640 --H 384 --D 5 --S 2000 --L 4.5 --N ugly, blurry --SS Euler_A")
    assert (sample.prompt, sample.negative, sample.width, sample.height) == ("a photo of sks", "ugly, blurry", 640, 384)
    assert (sample.seed, sample.steps, sample.scale, sample.sampler) == (5, 1000, 4.5, "euler_a")  # steps capped
    with pytest.raises(ConfigError, match="--ar"):
        parse_prompt_line("sks --ar 16:9")
    with pytest.raises(ConfigError, match="sampler 'plms'"):
        parse_prompt_line("sks --ss plms")


def test_toml_and_json_prompt_files_as_kohya_reads_them(tmp_path):
    toml = tmp_path / "prompts.toml"
    toml.write_text('[prompt]\nwidth = 320\nsample_steps = 12\nnegative_prompt = "blurry"\n'
                    '[[prompt.subset]]\nprompt = "sks dog"\nseed = 3\n'
                    '[[prompt.subset]]\nprompt = "sks cat"\nwidth = 256\nsample_sampler = "k_euler"\n')  # fmt: skip
    first, second = read_prompt_file(toml)
    assert (first.prompt, first.width, first.steps, first.negative, first.seed) == ("sks dog", 320, 12, "blurry", 3)
    assert (second.width, second.sampler) == (256, "k_euler")
    js = tmp_path / "prompts.json"
    js.write_text(json.dumps(["sks --w 128", {"prompt": "sks b", "scale": 3, "height": 192}]))
    a, b = read_prompt_file(js)
    assert (a.prompt, a.width, b.prompt, b.scale, b.height) == ("sks", 128, "sks b", 3.0, 192)


def test_sample_samplers_map_to_kohyas_diffusers_schedulers():
    expected = {"ddim": "DDIMScheduler", "pndm": "PNDMScheduler", "euler": "EulerDiscreteScheduler",
                "k_euler_a": "EulerAncestralDiscreteScheduler", "heun": "HeunDiscreteScheduler",
                "k_dpm_2": "KDPM2DiscreteScheduler", "dpm_2_a": "KDPM2AncestralDiscreteScheduler",
                "dpmsingle": "DPMSolverSinglestepScheduler", "dpmsolver++": "DPMSolverMultistepScheduler"}  # fmt: skip
    for name, cls in expected.items():
        assert type(sample_scheduler(name, v_prediction=False)).__name__ == cls, name
    assert sample_scheduler("dpmsolver++", False).config.algorithm_type == "dpmsolver++"
    assert sample_scheduler("ddim", True).config.prediction_type == "v_prediction"
    assert sample_scheduler("ddim", False).config.clip_sample is True  # kohya's get_my_scheduler


def test_attention_syntax_reads_as_in_the_webui():
    parts = parse_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
    assert [t for t, _ in parts] == ["a ", "house", " ", "on", " a ", "hill", ", sun, ", "sky", "."]
    assert [w for _, w in parts] == pytest.approx([1.0, 1.3 * 1.1 * 1.1, 1.1, 1.0, 1.1, 0.55, 1.1, 1.1**4, 1.1])
    assert parse_attention(r"\(literal\]") == [("(literal]", 1.0)]
    assert parse_attention("[faint") == [("faint", pytest.approx(1 / 1.1))]


def test_weighted_and_long_prompts_for_samples(tiny_sd_dir):
    from lib_sdtrain.models.loading import load_sd_model

    model = load_sd_model(tiny_sd_dir)
    tok, te = model.tokenizer, model.text_encoder
    plain = weighted_prompt_states(tok, te, ["sks dog"])
    assert torch.allclose(plain, text.encode(te, text.tokenize(tok, ["sks dog"])), atol=1e-5)  # weights 1: as trained
    weighted = weighted_prompt_states(tok, te, ["sks (dog:1.5)"])
    n = len(tok("sks").input_ids) - 2
    scaled = plain.clone()
    scaled[:, 1 + n : 1 + len(tok("sks dog").input_ids) - 2] *= 1.5
    assert torch.allclose(weighted, scaled * plain.mean() / scaled.mean(), atol=1e-5)  # kohya keeps the mean
    long = weighted_prompt_states(tok, te, [" ".join(["sks"] * 100), ""])
    assert long.shape[:2] == (2, 154)  # two chunks of 77, the negative padded to the same length


def test_sample_at_first_and_the_sampler_options(tiny_sd_dir, sks_dataset, tmp_path, monkeypatch):
    from lib_sdtrain.train import sampling

    used = []
    original = sampling.sample_scheduler
    monkeypatch.setattr(sampling, "sample_scheduler", lambda name, v: used.append(name) or original(name, v))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("(sks:1.2) --w 64 --h 64 --s 2 --d 1\nsks --w 64 --h 64 --s 2 --ss euler_a\n")
    result = train(config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=1, sample_prompts=str(prompts),
                              sample_at_first=True, sample_sampler="dpmsolver++"))  # fmt: skip
    first = sorted(p.name for p in result.samples if "_e000000_" in p.name)
    assert len(first) == 2 and first[0].startswith("sks_e000000_00_")
    assert used.count("dpmsolver++") >= 2 and used.count("euler_a") >= 2  # before the first step and at the end


def names(tmp_path, pattern: str) -> list[str]:
    return sorted(p.name for p in (tmp_path / "out").glob(pattern))


# --- saving -----------------------------------------------------------------------------------------------------------


def test_save_last_n_epochs_keeps_only_the_newest(tiny_sd_dir, sks_dataset, tmp_path):
    train(config_for(tiny_sd_dir, sks_dataset, tmp_path, dataset_repeats=1, max_train_epochs=5,
                     save_every_n_epochs=1, save_last_n_epochs=2, save_state=True,
                     save_last_n_epochs_state=1))  # fmt: skip
    assert names(tmp_path, "sks-0*.safetensors") == ["sks-000003.safetensors", "sks-000004.safetensors"]
    assert names(tmp_path, "sks-0*-state") == ["sks-000004-state"]


def test_save_n_epoch_ratio_and_save_last_n_steps(tiny_sd_dir, sks_dataset, tmp_path):
    train(config_for(tiny_sd_dir, sks_dataset, tmp_path, dataset_repeats=1, max_train_epochs=6, save_n_epoch_ratio=3,
                     save_every_n_steps=2, save_last_n_steps=1))  # fmt: skip
    assert names(tmp_path, "sks-0*.safetensors") == ["sks-000002.safetensors", "sks-000004.safetensors"]
    steps = names(tmp_path, "sks-step*.safetensors")
    assert steps == ["sks-step00000004.safetensors"]  # saved at 2 and 4; at 4, step 2 is older than the last 1


def test_save_model_as_ckpt_for_a_lora_and_diffusers_for_a_fine_tune(tiny_sd_dir, sks_dataset, tmp_path):
    result = train(config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=1, save_model_as="ckpt"))
    assert result.output.name == "sks.ckpt"
    state = torch.load(result.output, weights_only=True)
    assert any(k.startswith("lora_unet_") for k in state)
    tune = train(config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=1, network_module=None,
                            learning_rate=1e-5, save_model_as="diffusers_safetensors"))  # fmt: skip
    assert tune.output.is_dir() and (tune.output / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tune.output / "model_index.json").is_file()
    with pytest.raises(ConfigError, match="a LoRA is saved as safetensors, ckpt or pt"):
        settings(network_module="networks.lora", save_model_as="diffusers")


def test_no_metadata_keeps_kohyas_minimum_and_training_comment_is_written(tiny_sd_dir, sks_dataset, tmp_path):
    bare = train(config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=1, no_metadata=True,
                            training_comment="hello"))  # fmt: skip
    with safe_open(str(bare.output), "pt") as f:
        ss = {k for k in f.metadata() if k.startswith("ss_")}
    assert ss and ss <= MINIMUM_KEYS and "ss_network_dim" in ss
    full = train(config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=1, training_comment="hello"))
    with safe_open(str(full.output), "pt") as f:
        assert f.metadata()["ss_training_comment"] == "hello"


def test_a_sampler_that_cannot_take_the_steps_is_refused_before_training(tmp_path):
    from lib_sdtrain.train.sampling import check_samplers, parse_prompt_line

    check_samplers([parse_prompt_line("sks --s 20 --ss pndm")], "ddim")
    with pytest.raises(ConfigError, match=r"Sample prompt 2 \('sks'\): the pndm sampler cannot run 3 steps"):
        check_samplers([parse_prompt_line("a --s 20"), parse_prompt_line("sks --s 3 --ss pndm")], "ddim")
