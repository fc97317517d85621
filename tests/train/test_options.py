"""The option schema: help for every setting, one type check for TOML and command line, TOML writing, presets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import tomllib

from lib_sdtrain.cli import build_parser
from lib_sdtrain.errors import ConfigError
from lib_sdtrain.main import main
from lib_sdtrain.train import presets
from lib_sdtrain.train.config import INTERNAL_FIELDS, TrainConfig, config_values
from lib_sdtrain.train.options import CATEGORIES, OPTIONS, coerce_value, option_by_name
from lib_sdtrain.train.settings import config_from_dict, load_config
from lib_sdtrain.train.toml_writer import config_to_toml

REQUIRED = {"pretrained_model_name_or_path": "models/base.safetensors", "train_data_dir": "datasets/sks"}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _train_parser():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    return subparsers.choices["train"]


# --- the schema -------------------------------------------------------------------------------------------------


def test_every_setting_has_help_a_category_and_a_type():
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in INTERNAL_FIELDS]
    assert [o.name for o in OPTIONS] == names
    for option in OPTIONS:
        assert option.help.strip().endswith(".") and len(option.help) > 20, option.name
        assert option.category in CATEGORIES, option.name
        assert option.type in (bool, int, float, str, list), option.name
        if option.default is None:
            assert option.optional, option.name
        else:
            # an int | float option (kohya's int_or_float, e.g. lr_warmup_steps) is typed float, with an int default
            assert isinstance(option.default, option.type if option.type is not float else int | float), option.name
        for choice in option.choices or ():
            assert isinstance(choice, option.type), option.name
    assert option_by_name("min_snr_gamma").optional and option_by_name("min_snr_gamma").type is float
    assert option_by_name("network_dim").common and not option_by_name("network_dropout").common
    assert {o.category for o in OPTIONS} == set(CATEGORIES)  # no empty group in the form


def test_each_option_says_what_it_trains_and_whether_a_subset_may_set_it():
    """The form's per-kind fields and kohya's per-subset settings come from the schema, nowhere else."""
    from lib_sdtrain.train.dataset_config import AUGMENT_KEYS, Augment
    from lib_sdtrain.train.options import TRAINING_KINDS

    trains = {o.name: o.trains for o in OPTIONS}
    assert trains["train_text_encoder"] == {"full"} and trains["conv_dim"] == trains["conv_alpha"] == {"locon"}
    assert trains["network_dim"] == {"lora", "locon"} and trains["learning_rate"] == set(TRAINING_KINDS)
    per_subset = [o for o in OPTIONS if o.per_subset]
    assert {o.category for o in per_subset} == {"dataset"} and len(AUGMENT_KEYS) == 16
    assert Augment() == Augment(**{o.name: o.default for o in per_subset})


def test_choices_are_the_sets_the_trainer_accepts():
    from diffusers.optimization import SchedulerType

    from lib_sdtrain.network.kohya_file import SAVE_DTYPES

    assert set(option_by_name("save_precision").choices) == set(SAVE_DTYPES)
    own = {"adafactor", "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay"}  # built by optim itself
    assert set(option_by_name("lr_scheduler").choices) - own <= {s.value for s in SchedulerType}
    assert option_by_name("mixed_precision").choices == ("no", "fp16", "bf16")
    assert option_by_name("max_token_length").choices == (75, 150, 225)
    assert "networks.lora" in option_by_name("network_module").choices


def test_sdtrain_settings_do_not_touch_training():
    config = config_from_dict({**REQUIRED, "trigger_word": "sks", "preset": "sd15-character-lora"})
    plain = config_from_dict(REQUIRED)
    assert (config.trigger_word, config.preset) == ("sks", "sd15-character-lora")
    changed = {k for k, v in config_values(config).items() if v != config_values(plain)[k]}
    assert changed == {"trigger_word", "preset"}
    assert {option_by_name(k).category for k in changed} == {"sdtrain"}


def test_unknown_option_names_the_closest():
    with pytest.raises(ConfigError, match=r"Unknown setting 'network_dimm'\. Did you mean 'network_dim'\?"):
        option_by_name("network_dimm")


# --- type checks ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("network_dim", "abc", r"network_dim = 'abc': expected a whole number \(int\)"),
        ("network_dim", 4.7, r"network_dim = 4\.7: expected a whole number \(int\)"),
        ("network_dim", True, r"network_dim = True: expected a whole number \(int\)"),
        ("learning_rate", "fast", r"learning_rate = 'fast': expected a number such as 1e-4 \(float\)"),
        ("learning_rate", "nan", r"learning_rate = 'nan': expected a finite number"),
        ("shuffle_caption", "yes please", r"shuffle_caption = 'yes please': expected true or false \(bool\)"),
        ("shuffle_caption", 1, r"shuffle_caption = 1: expected true or false \(bool\)"),
        ("output_name", 12, r"output_name = 12: expected text \(str\)"),
        ("mixed_precision", "fp8", r"mixed_precision = 'fp8': expected one of no, fp16, bf16"),
        ("max_token_length", 100, r"max_token_length = 100: expected one of 75, 150, 225"),
        ("resolution", "big", r"resolution = 'big': expected 'width,height' in pixels"),
        ("network_dim", None, r"network_dim needs a value: expected a whole number \(int\)"),
    ],
)
def test_type_errors_name_the_key_the_value_and_the_type(key, value, message):
    with pytest.raises(ConfigError, match=message):
        coerce_value(option_by_name(key), value)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("learning_rate", "1e-4", 1e-4),
        ("learning_rate", 1, 1.0),
        ("network_dim", 4.0, 4),
        ("network_dim", "32", 32),
        ("shuffle_caption", "true", True),
        ("shuffle_caption", "False", False),
        ("shuffle_caption", True, True),
        ("optimizer_type", "adamw8bit", "AdamW8bit"),  # names match case-insensitively, as kohya's do
        ("resolution", "512,512", "512,512"),
        ("resolution", "512", "512"),
        ("resolution", 512, "512"),
        ("resolution", [512, 768], "512,768"),
        ("max_train_epochs", None, None),
        ("max_train_epochs", "", None),  # an empty number box
        ("network_module", "", None),  # an empty dropdown: a full fine-tune
        ("max_token_length", "150", 150),
    ],
)
def test_accepted_values(key, value, expected):
    assert coerce_value(option_by_name(key), value) == expected


def test_toml_type_errors_reach_load_config(tmp_path):
    toml = _write(tmp_path / "bad.toml", '[additional_network_arguments]\nnetwork_dim = "abc"\n')
    with pytest.raises(ConfigError, match=r"network_dim = 'abc': expected a whole number \(int\)"):
        load_config(toml, REQUIRED)
    toml = _write(tmp_path / "choice.toml", '[optimizer_arguments]\nlr_scheduler = "cosine_annealing"\n')
    with pytest.raises(ConfigError, match=r"lr_scheduler = 'cosine_annealing': expected one of constant, "):
        load_config(toml, REQUIRED)
    toml = _write(tmp_path / "ok.toml", '[optimizer_arguments]\nlearning_rate = "1e-4"\n[sdtrain]\nxformers = 1\n')
    config = load_config(toml, REQUIRED)
    assert config.learning_rate == 1e-4 and config.ignored == {"xformers": 1}


# --- TOML writing -----------------------------------------------------------------------------------------------


def test_config_to_toml_round_trips_through_load_config(tmp_path):
    values = {
        **REQUIRED,
        "network_module": "networks.lora",
        "network_dim": 32,
        "network_alpha": 16,
        "learning_rate": "5e-5",
        "text_encoder_lr": 1e-5,
        "resolution": [640, 512],
        "shuffle_caption": True,
        "max_train_epochs": 10,
        "min_snr_gamma": None,  # empty: left out
        "output_dir": "C:\\Users\\me\\loras",
        "output_name": "my lora",
        "training_comment": 'my "quoted" note',  # output_name is a file name: no quotes there
        "sample_prompts": "prompts.txt",
        "trigger_word": "sks\tperson",
        "preset": "sd15-character-lora",
        "xformers": True,
    }
    text = config_to_toml(values)
    assert text.startswith("# ")
    parsed = tomllib.loads(text)
    assert parsed["additional_network_arguments"]["network_dim"] == 32
    assert parsed["sdtrain"] == {"trigger_word": "sks\tperson", "preset": "sd15-character-lora"}
    assert "seed" not in text and "min_snr_gamma" not in text  # defaults and empty values are left out
    path = _write(tmp_path / "lora.toml", text)
    assert load_config(path) == config_from_dict(values)

    full = config_from_dict(values)
    everything = _write(tmp_path / "all.toml", config_to_toml(config_values(full), only_changed=False))
    assert "seed = 42" in everything.read_text()
    assert load_config(everything) == full


def test_config_to_toml_refuses_bad_values():
    with pytest.raises(ConfigError, match="Did you mean 'learning_rate'"):
        config_to_toml({"learning_rat": 1e-4})
    with pytest.raises(ConfigError, match=r"network_dim = 'many'"):
        config_to_toml({"network_dim": "many"})


# --- the command line -------------------------------------------------------------------------------------------


def test_train_help_is_the_schema(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    for option in OPTIONS:
        assert " ".join(option.help.split()) in help_text, option.name
        assert f"--{option.name}" in help_text
    for title, table in CATEGORIES.values():
        assert f"{title} [{table}]:" in help_text
    assert "--mixed_precision {no,fp16,bf16}" in help_text
    assert "(default: 0.0001)" in help_text and "(default: fp16)" in help_text


def test_cli_flags_use_the_schema_types():
    parser = _train_parser()
    assert parser.parse_args(["--save_state", "false"]).save_state is False
    assert parser.parse_args(["--save_state"]).save_state is True
    assert parser.parse_args(["--save_state", "true", "--network_dim", "8"]).save_state is True
    args = parser.parse_args(["--learning_rate", "1e-4", "--optimizer_type", "lion", "--resolution", "768"])
    assert (args.learning_rate, args.optimizer_type, args.resolution) == (1e-4, "Lion", "768")
    assert parser.parse_args([]).save_state is None  # not given: the config file decides


def test_cli_type_errors_match_the_toml_messages(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--network_dim", "4.7"])
    assert "network_dim = '4.7': expected a whole number (int)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--save_state", "maybe"])
    assert "save_state = 'maybe': expected true or false (bool)" in capsys.readouterr().err


def test_cli_false_overrides_the_config_file(tmp_path):
    toml = _write(tmp_path / "lora.toml", "[saving_arguments]\nsave_state = true\n")
    args = _train_parser().parse_args(["--config_file", str(toml), "--save_state", "false"])
    overrides = {k: v for k, v in vars(args).items() if k not in ("config_file", "handler", "command")}
    assert load_config(toml, {**overrides, **REQUIRED}).save_state is False
    assert load_config(toml, REQUIRED).save_state is True


# --- presets ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["sd15-character-lora", "sd15-style-lora", "sd15-full-finetune", "sdxl-character-lora", "sdxl-style-lora"]
)
def test_builtin_presets_load_and_validate(name):
    preset = next(p for p in presets.list_presets(None) if p.name == name)
    assert preset.builtin and preset.description and not preset.error
    assert preset.values["preset"] == name
    config = load_config(preset.path, REQUIRED)
    assert config.preset == name
    assert presets.load_preset(name) == preset.values
    assert config.is_lora == (name != "sd15-full-finetune")
    rows = presets.describe_preset(preset.values)
    assert [key for key, _, _ in rows] == [o.name for o in OPTIONS if o.name in preset.values]
    assert all(value and help_text for _, value, help_text in rows)
    # every value carries a comment saying why
    lines = preset.path.read_text(encoding="utf-8").splitlines()
    settings = [line for line in lines if "=" in line and not line.startswith("#")]
    assert all("#" in line for line in settings if not line.startswith(("network_module", "preset")))


def test_character_preset_holds_the_community_values():
    values = presets.load_preset("sd15-character-lora")
    assert (values["network_dim"], values["network_alpha"]) == (32, 16.0)
    assert (values["unet_lr"], values["text_encoder_lr"]) == (1e-4, 5e-5)
    assert (values["shuffle_caption"], values["keep_tokens"], values["min_snr_gamma"]) == (True, 1, 5.0)
    finetune = presets.load_preset("sd15-full-finetune")
    assert "network_module" not in finetune and finetune["gradient_checkpointing"] is True
    assert 1e-6 <= finetune["learning_rate"] <= 5e-6


def test_user_presets_save_load_and_list(tmp_path):
    user_dir = tmp_path / "presets"
    values = {"network_module": "networks.lora", "network_dim": 16, "learning_rate": "2e-4", "seed": 42}
    path = presets.save_user_preset("my faces", values, user_dir, description="Faces at dim 16")
    assert path == user_dir / "my faces.toml"
    loaded = presets.load_preset("my faces", user_dir)
    assert loaded == {"network_module": "networks.lora", "network_dim": 16, "learning_rate": 2e-4, "preset": "my faces"}
    listed = {p.name: p for p in presets.list_presets(user_dir)}
    assert listed["my faces"].description == "Faces at dim 16" and not listed["my faces"].builtin
    assert listed["sd15-character-lora"].builtin
    assert load_config(path, REQUIRED).network_dim == 16

    presets.save_user_preset("my faces", {**values, "network_dim": 24}, user_dir)  # replaces the old one
    assert presets.load_preset("my faces", user_dir)["network_dim"] == 24


def test_user_presets_refuse_unsafe_and_builtin_names(tmp_path):
    for name in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(ConfigError, match="Invalid preset name"):
            presets.save_user_preset(name, {"network_dim": 8}, tmp_path)
    with pytest.raises(ConfigError, match="built-in preset"):
        presets.save_user_preset("sd15-character-lora", {"network_dim": 8}, tmp_path)
    with pytest.raises(ConfigError, match="Invalid preset name"):
        presets.load_preset("../x", tmp_path)
    with pytest.raises(ConfigError, match=r"No preset called 'nope'\. Presets: .*sd15-style-lora"):
        presets.load_preset("nope", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_broken_user_preset_is_listed_with_its_error(tmp_path):
    _write(tmp_path / "broken.toml", "# Broken\nnetwork_dim = 'lots'\n")
    _write(tmp_path / "sd15-style-lora.toml", "# shadows a built-in\nnetwork_dim = 2\n")
    listed = {p.name: p for p in presets.list_presets(tmp_path)}
    assert "network_dim = 'lots'" in listed["broken"].error and listed["broken"].description == "Broken"
    assert listed["sd15-style-lora"].builtin  # the built-in wins
    with pytest.raises(ConfigError, match=r"Preset broken\.toml: network_dim = 'lots'"):
        presets.load_preset("broken", tmp_path)
