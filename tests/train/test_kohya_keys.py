"""train/kohya_keys.py and key_table.py: every kohya key is honoured, a no-op, or refused with a message.

The README's key table, and kohya's own example configs walked key by key (none may be silently ignored)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

from lib_sdtrain.errors import ConfigError
from lib_sdtrain.train.config import KNOWN_KEYS, flatten_toml
from lib_sdtrain.train.key_table import key_status, key_table_markdown, readme_key_table, table_keys
from lib_sdtrain.train.kohya_keys import (
    ACCEPTED_OUTSIDE_SCHEMA,
    BY_KEY,
    DIFFERING_DEFAULTS,
    KOHYA_KEYS,
    Policy,
    refusal,
)
from lib_sdtrain.train.options import OPTIONS
from lib_sdtrain.train.settings import config_from_dict, load_config, validate_config
from tests.train.conftest import config_for

REFUSED = {e.key: e.note for e in KOHYA_KEYS if e.policy is Policy.REFUSED}

README = Path(__file__).resolve().parents[2] / "README.md"


# --- the README's table -----------------------------------------------------------------------------------------


def test_readme_key_table_is_the_generated_one():
    """When this fails, regenerate: `.venv/bin/python -m lib_sdtrain.train.key_table README.md`."""
    assert readme_key_table(README.read_text(encoding="utf-8")) == key_table_markdown()


def test_key_table_lists_every_known_key_once():
    table = key_table_markdown()
    keys = [o.name for o in OPTIONS] + sorted(ACCEPTED_OUTSIDE_SCHEMA) + sorted(REFUSED)
    assert sorted(table_keys()) == sorted(keys)
    for key in keys:
        assert table.count(f"| `{key}` |") == 1, key
    assert not (KNOWN_KEYS | ACCEPTED_OUTSIDE_SCHEMA) & set(REFUSED)
    for key in DIFFERING_DEFAULTS:
        assert "default differs" in key_status(key)[1], key
    readme = README.read_text(encoding="utf-8")
    for key in ("learning_rate", "save_precision", "seed"):
        assert f"`{key}`" in readme.split("## kohya keys", 1)[1].split("<!--", 1)[0], key


def test_refused_keys_say_why():
    for key, reason in REFUSED.items():
        with pytest.raises(ConfigError, match=rf"^{key} is not supported by SD-Train: .+") as caught:
            config_from_dict({key: True})
        assert reason in str(caught.value)


def _other_value(accepted: tuple):
    """A value none of `accepted` equals."""
    return "something else" if not any(isinstance(a, str) and a for a in accepted) else 12345


@pytest.mark.parametrize("entry", KOHYA_KEYS, ids=lambda e: e.key)
def test_each_key_behaves_as_its_policy_says(entry):
    """The checks are the table's: every entry, applied through config_from_dict, does what its policy names."""
    required = {"pretrained_model_name_or_path": "m", "train_data_dir": "d"}
    if entry.policy in (Policy.DEFAULT_DIFFERS, Policy.SDTRAIN_ONLY):
        assert entry.key in KNOWN_KEYS and entry.key not in ACCEPTED_OUTSIDE_SCHEMA
        assert (entry.key in DIFFERING_DEFAULTS) == (entry.policy is Policy.DEFAULT_DIFFERS)
    elif entry.policy is Policy.REFUSED:
        assert refusal(entry.key) == entry.note
        with pytest.raises(ConfigError, match=rf"^{entry.key} is not supported by SD-Train"):
            config_from_dict({**required, entry.key: False})
    elif entry.policy is Policy.DEFAULT_ONLY:
        for value in entry.accepted:
            assert config_from_dict({**required, entry.key: value}).ignored == {entry.key: value}
        with pytest.raises(ConfigError, match=rf"^{entry.key} = .* is not implemented in SD-Train"):
            config_from_dict({**required, entry.key: _other_value(entry.accepted)})
    else:  # HONOURED and NO_OP: any value is accepted, outside the schema
        for value in (True, False, "text"):
            assert config_from_dict({**required, entry.key: value}).ignored == {entry.key: value}
    assert key_status(entry.key)[1], entry.key  # and the README says what happens


# --- kohya's own example configs ----------------------------------------------------------------------------------

# kohya sd-scripts docs/train_network_README: the LoRA example's command line, as a --config_file.
TRAIN_NETWORK_README = """
pretrained_model_name_or_path = "model.safetensors"
dataset_config = "DATASET_CONFIG"
output_dir = "out"
output_name = "lora"
save_model_as = "safetensors"
prior_loss_weight = 1.0
max_train_steps = 400
learning_rate = 1e-4
optimizer_type = "AdamW8bit"
xformers = true
mixed_precision = "fp16"
cache_latents = true
gradient_checkpointing = true
save_every_n_epochs = 1
network_module = "networks.lora"
"""

# kohya's train_README / fine_tune tutorial layout (tables flattened), with the common training switches.
TRAIN_README = """
[model_arguments]
v2 = false
v_parameterization = false
pretrained_model_name_or_path = "model.safetensors"

[additional_network_arguments]
no_metadata = false
network_module = "networks.lora"
network_dim = 32
network_alpha = 16
network_args = ["conv_dim=8", "conv_alpha=4"]
network_train_unet_only = false
network_train_text_encoder_only = false

[optimizer_arguments]
optimizer_type = "AdamW"
learning_rate = 1e-4
max_grad_norm = 1.0
lr_scheduler = "constant"
lr_warmup_steps = 0

[dataset_arguments]
debug_dataset = false
in_json = "meta_lat.json"
train_data_dir = "train_data"
dataset_repeats = 10
shuffle_caption = true
keep_tokens = 1
resolution = "512,512"
caption_dropout_rate = 0
caption_tag_dropout_rate = 0
caption_dropout_every_n_epochs = 0
color_aug = false
token_warmup_min = 1
token_warmup_step = 0

[training_arguments]
output_dir = "output"
output_name = "lora"
save_precision = "fp16"
save_every_n_epochs = 1
train_batch_size = 4
max_token_length = 225
mem_eff_attn = false
xformers = true
max_train_epochs = 10
max_data_loader_n_workers = 8
persistent_data_loader_workers = true
seed = 31337
gradient_checkpointing = false
gradient_accumulation_steps = 1
mixed_precision = "fp16"
clip_skip = 2
logging_dir = "logs"
log_prefix = "lora"
noise_offset = 0.0
lowram = false

[sample_prompt_arguments]
sample_every_n_epochs = 1
sample_sampler = "ddim"

[saving_arguments]
save_model_as = "safetensors"
"""

# The kohya_ss GUI's LoRA config file as it writes it for sd-scripts (its defaults for an SD 1.5 LoRA).
KOHYA_SS_GUI = """
bucket_no_upscale = true
bucket_reso_steps = 64
cache_latents = true
cache_latents_to_disk = false
caption_extension = ".txt"
clip_skip = 1
dynamo_backend = "no"
enable_bucket = true
epoch = 1
gradient_accumulation_steps = 1
huber_c = 0.1
huber_schedule = "snr"
learning_rate = 0.0001
logging_dir = "log"
loss_type = "l2"
lr_scheduler = "cosine"
lr_scheduler_args = []
lr_scheduler_num_cycles = 1
lr_scheduler_power = 1
lr_warmup_steps = 0
max_bucket_reso = 2048
max_data_loader_n_workers = 0
max_grad_norm = 1
max_timestep = 1000
max_token_length = 75
max_train_epochs = 1
max_train_steps = 1600
min_bucket_reso = 256
mixed_precision = "fp16"
multires_noise_discount = 0.3
network_alpha = 1
network_args = []
network_dim = 8
network_dropout = 0
network_module = "networks.lora"
no_half_vae = false
noise_offset_type = "Original"
optimizer_args = []
optimizer_type = "AdamW8bit"
output_dir = "model"
output_name = "last"
pretrained_model_name_or_path = "runwayml/stable-diffusion-v1-5"
prior_loss_weight = 1
resolution = "512,512"
sample_prompts = "model/prompt.txt"
sample_sampler = "euler_a"
save_every_n_epochs = 1
save_model_as = "safetensors"
save_precision = "fp16"
text_encoder_lr = 0.0001
train_batch_size = 1
train_data_dir = "img"
unet_lr = 0.0001
xformers = true
"""

# A kohya_ss GUI config with non-default values for options SD-Train does not implement: each one is refused.
# (loss_type, timesteps, multires and ip noise, zero_terminal_snr, debiased_estimation_loss and scale_weight_norms
# are implemented: tests/train/test_noise_and_loss.py.)
GUI_NOT_IMPLEMENTED = {
    "noise_offset_type": "Perlin",
    "lr_scheduler_args": ["T_max=100"],
    "masked_loss": True,
}


def _example_keys(text: str) -> dict:
    return flatten_toml(tomllib.loads(text))


@pytest.mark.parametrize("text", [TRAIN_NETWORK_README, TRAIN_README, KOHYA_SS_GUI], ids=["lora", "tutorial", "gui"])
def test_kohya_example_configs_are_honoured_or_reported(text, tmp_path):
    values = _example_keys(text)
    if values.get("dataset_config") == "DATASET_CONFIG":
        (tmp_path / "img").mkdir()
        dataset = tmp_path / "dataset.toml"
        dataset.write_text(f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{(tmp_path / "img").as_posix()}"\n')
        values["dataset_config"] = str(dataset)
    config = config_from_dict(values)
    validate_config(config)
    for key, value in values.items():
        if key in config.given:  # honoured: the setting itself, or its kohya value as the trainer reads it
            assert key in KNOWN_KEYS, key
        else:  # reported: the start of training names every accepted-but-unused key
            assert key in config.ignored and config.ignored[key] == value, key
        _group, status = key_status(key)  # and the README says which
        assert status, key
    assert config.locon_dim == (8 if "conv_dim=8" in values.get("network_args", []) else None)


@pytest.mark.parametrize(("key", "value"), sorted(GUI_NOT_IMPLEMENTED.items()))
def test_gui_values_sd_train_cannot_honour_are_refused(key, value):
    values = {**_example_keys(KOHYA_SS_GUI), key: value}
    assert BY_KEY[key].policy is Policy.DEFAULT_ONLY and BY_KEY[key].accepted, key
    with pytest.raises(ConfigError, match=rf"^{key} = .* is not implemented in SD-Train"):
        config_from_dict(values)


@pytest.mark.parametrize(
    ("entry", "message"),
    [("algo=loha", "algo=loha is not implemented"), ("rank_dropout=1.5", "rank_dropout=1.5"), ("block_dims=2", "")],
)
def test_network_args_sd_train_cannot_honour_are_refused(entry, message):
    values = {**_example_keys(KOHYA_SS_GUI), "network_args": [entry]}
    with pytest.raises(ConfigError, match=f"network_args {message}"):
        validate_config(config_from_dict(values))


def test_no_key_is_accepted_and_then_ignored():
    """Every accepted kohya key is honoured, a no-op only for speed/memory/logging (with its note), or accepted only
    at a value that changes nothing: the README table has no "accepted but not used" group."""
    statuses = {key: key_status(key)[0] for key in ACCEPTED_OUTSIDE_SCHEMA}
    assert "Accepted, not used" not in statuses.values(), statuses


# --- kohya keys SD-Train now implements or refuses -----------------------------------------------------------------


IMPLEMENTED = (
    "min_timestep", "max_timestep", "multires_noise_iterations", "multires_noise_discount",
    "noise_offset_random_strength", "adaptive_noise_scale", "ip_noise_gamma", "ip_noise_gamma_random_strength",
    "zero_terminal_snr", "debiased_estimation_loss", "scale_v_pred_loss_like_noise_pred", "v_pred_like_loss",
    "loss_type", "huber_c", "huber_schedule", "huber_scale", "scale_weight_norms", "network_multiplier",
    "dim_from_weights", "vae",
)  # fmt: skip


def test_keys_are_schema_options_not_default_only():
    for key in IMPLEMENTED:
        assert key in KNOWN_KEYS and key not in ACCEPTED_OUTSIDE_SCHEMA, key
    values = {"pretrained_model_name_or_path": "m", "train_data_dir": "d", "loss_type": "huber", "min_timestep": 100}
    config = config_from_dict({**values, "noise_offset_type": "Multires", "multires_noise_iterations": 6})
    assert (config.loss_type, config.min_timestep, config.multires_noise_iterations) == ("huber", 100, 6)
    assert config.ignored == {"noise_offset_type": "Multires"}  # the GUI's field: sd-scripts does not read it
    with pytest.raises(ConfigError, match="loss_type"):
        config_from_dict({**values, "loss_type": "l3"})


def test_face_crop_aug_range_is_refused_unless_unset():
    base = {"pretrained_model_name_or_path": "m", "train_data_dir": "d"}
    assert "face_crop_aug_range" in load_config(None, {**base, "face_crop_aug_range": ""}).ignored
    with pytest.raises(ConfigError, match=r"face_crop_aug_range = '2\.0,4\.0' is not implemented"):
        load_config(None, {**base, "face_crop_aug_range": "2.0,4.0"})


def test_debug_dataset_is_refused_since_it_would_not_train(tiny_sd_dir, sks_dataset, tmp_path):
    with pytest.raises(ConfigError, match="debug_dataset = True is not implemented"):
        config_for(tiny_sd_dir, sks_dataset, tmp_path, debug_dataset=True)
    assert config_for(tiny_sd_dir, sks_dataset, tmp_path, debug_dataset=False).ignored == {"debug_dataset": False}
