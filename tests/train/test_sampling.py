"""train/sampling.py: kohya's sample prompts (flags, TOML and JSON files), its samplers, sample_at_first."""

from __future__ import annotations

import json

import pytest

from lib_sdtrain.errors import ConfigError
from lib_sdtrain.train.loop import train
from lib_sdtrain.train.sampling import parse_prompt_line, read_prompt_file, sample_scheduler
from tests.train.conftest import config_for


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


def test_a_sampler_that_cannot_take_the_steps_is_refused_before_training(tmp_path):
    from lib_sdtrain.train.sampling import check_samplers, parse_prompt_line

    check_samplers([parse_prompt_line("sks --s 20 --ss pndm")], "ddim")
    with pytest.raises(ConfigError, match=r"Sample prompt 2 \('sks'\): the pndm sampler cannot run 3 steps"):
        check_samplers([parse_prompt_line("a --s 20"), parse_prompt_line("sks --s 3 --ss pndm")], "ddim")
