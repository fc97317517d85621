"""The Train tab's fields come from the option schema, as `sdtrain train --help` does: same help text, same
types and choices; the form's values load as a config."""

from __future__ import annotations

import contextlib
import io
import re

import gradio as gr
import pytest

from lib_sdtrain.main import main
from lib_sdtrain.train.options import OPTIONS, option_by_name
from lib_sdtrain.train.settings import load_config
from lib_sdtrain.ui.option_form import OptionForm, form_value
from lib_sdtrain.ui.standalone_app import AppSettings, create_app
from lib_sdtrain.ui.train_tab import MODE_KEYS, MODES, applies_to, form_to_values


@pytest.fixture(scope="module")
def train_form(tmp_path_factory):
    blocks, host = create_app(AppSettings(home=str(tmp_path_factory.mktemp("home"))))
    forms = [b for b in blocks.blocks.values() if isinstance(b, gr.components.Component)]
    by_elem = {c.elem_id: c for c in forms if c.elem_id}
    return by_elem, host


def cli_help() -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["train", "--help"])
    return re.sub(r"\s+", " ", out.getvalue())


def test_the_form_and_the_cli_show_the_schema_help_for_every_option(train_form):
    components, _ = train_form
    help_text = cli_help()
    for option in OPTIONS:
        if option.name in MODE_KEYS:  # set by the "What to train" radio
            continue
        component = components[f"sdtrain_opt_{option.name}"]
        assert component.info == option.help, option.name
        assert component.label == option.name
        assert re.sub(r"\s+", " ", option.help) in help_text, option.name
        if option.choices:
            assert isinstance(component, gr.Dropdown)
            assert [c for c in component.choices if c] == [str(c) for c in option.choices]
        elif option.type is bool:
            assert isinstance(component, gr.Checkbox)


def test_form_values_load_as_a_config_and_empty_optionals_keep_their_defaults(train_form, tmp_path):
    _, host = train_form
    form = OptionForm([o for o in OPTIONS if o.name not in MODE_KEYS])
    for option in form.options:
        form.components[option.name] = object()  # only the names and order matter here
    raw = {o.name: o.default for o in form.built}
    raw.update(pretrained_model_name_or_path="m", train_data_dir=str(tmp_path), network_dim=16.0,
               learning_rate=3e-4, unet_lr="", text_encoder_lr="0", max_train_epochs="")  # fmt: skip
    values = form_to_values(host, form, MODES[1], "", [raw[o.name] for o in form.built])
    config = load_config(None, values)
    assert config.network_module == "networks.lora" and config.conv_dim == 8  # LoCon
    assert config.network_dim == 16 and config.learning_rate == 3e-4
    assert config.unet_lr is None and config.max_train_epochs is None  # empty: not set
    assert config.text_encoder_lr == 0  # zero is a value, not "empty"
    full = form_to_values(host, form, MODES[2], "", [raw[o.name] for o in form.built])
    assert "network_module" not in full


def test_bad_values_are_refused_with_the_key_named():
    with pytest.raises(Exception, match="network_dim"):
        load_config(None, {"pretrained_model_name_or_path": "m", "train_data_dir": "d", "network_dim": "abc"})
    assert form_value(option_by_name("max_train_epochs"), " ") is None
    assert form_value(option_by_name("max_token_length"), "150") == 150


def test_the_form_hides_options_that_do_not_apply_to_what_is_trained():
    form = OptionForm([o for o in OPTIONS if o.name not in MODE_KEYS])
    for option in form.options:
        form.components[option.name] = object()
    raw = [o.default for o in form.built]

    def shown(mode: str, query: str = "", changed_only: bool = False) -> set[str]:
        updates = form.visibility(query, changed_only, raw, lambda o: applies_to(o, mode))
        return {o.name for o, u in zip(form.built, updates, strict=True) if u["visible"]}

    lora, locon, full = (shown(mode) for mode in MODES)
    assert {"network_dim", "network_alpha"} <= lora and "conv_dim" not in lora and "train_text_encoder" not in lora
    assert {"conv_dim", "conv_alpha"} <= locon
    assert "network_dim" not in full and "train_text_encoder" in full
    found = shown(MODES[0], "snr")  # names and help texts are searched
    assert {"min_snr_gamma", "zero_terminal_snr"} <= found and "network_dim" not in found
    assert shown(MODES[0], changed_only=True) == set()
