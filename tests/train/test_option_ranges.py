"""Numbers out of range are refused with what is allowed, from the command line, a TOML or code, before any model
loads: the ranges live in the option schema, and every source goes through it."""

from __future__ import annotations

import pytest

from lib_sdtrain.errors import ConfigError
from lib_sdtrain.main import main
from lib_sdtrain.train.config import TrainConfig
from lib_sdtrain.train.options import OPTIONS, option_by_name
from lib_sdtrain.train.settings import load_config, validate_config

OUT_OF_RANGE = [
    ("max_train_epochs", "-3", "1 or more"),
    ("max_train_steps", "0", "1 or more"),
    ("train_batch_size", "0", "1 or more"),
    ("caption_dropout_rate", "1.5", "from 0 to 1"),
    ("network_dropout", "1", "from 0 to below 1"),
    ("learning_rate", "-1e-4", "0 or more"),
    ("seed", "-1", "from 0 to 4294967295"),
    ("min_timestep", "1000", "from 0 to 999"),
    ("save_every_n_epochs", "0", "1 or more"),
]


@pytest.mark.parametrize(("name", "value", "allowed"), OUT_OF_RANGE)
def test_the_command_line_refuses_before_loading_a_model(name, value, allowed, capsys, tmp_path):
    argv = ["train", "--pretrained_model_name_or_path", str(tmp_path / "no-such-model"), f"--{name}={value}"]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert f"{name} = " in error and allowed in error and "no-such-model" not in error


@pytest.mark.parametrize(("name", "value", "allowed"), OUT_OF_RANGE)
def test_a_toml_and_a_config_made_in_code_are_refused_alike(name, value, allowed, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(f'pretrained_model_name_or_path = "m"\ntrain_data_dir = "d"\n{name} = {value}\n')
    with pytest.raises(ConfigError, match=allowed):
        load_config(config)
    typed = option_by_name(name).type(float(value))
    with pytest.raises(ConfigError, match=allowed):
        validate_config(TrainConfig(pretrained_model_name_or_path="m", train_data_dir="d", **{name: typed}))


def test_every_number_option_states_its_range_in_the_help_or_takes_any_value():
    bounded = [o for o in OPTIONS if o.type in (int, float) and o.range_text]
    assert len(bounded) >= 40
    assert option_by_name("network_multiplier").range_text == ""  # kohya takes any strength, negative too
