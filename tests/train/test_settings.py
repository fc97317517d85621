"""train/settings.py: network_args read and checked as kohya reads them, into the config's LoCon dims."""

from __future__ import annotations

import pytest

from lib_sdtrain.errors import ConfigError
from lib_sdtrain.train.settings import load_config
from tests.train.conftest import REQUIRED


def test_network_args_conv_dim_makes_a_locon():
    config = load_config(None, {**REQUIRED, "network_module": "networks.lora",
                                "network_args": ["conv_dim=8", "conv_alpha=4"]})  # fmt: skip
    assert "network_args" not in config.ignored
    assert (config.locon_dim, config.locon_alpha) == (8, 4.0)
    kohya_default = load_config(None, {**REQUIRED, "network_module": "networks.lora", "network_args": ["conv_dim=8"]})
    assert (kohya_default.locon_dim, kohya_default.locon_alpha) == (8, 1.0)  # kohya: conv_alpha defaults to 1
    plain = load_config(None, {**REQUIRED, "network_module": "lycoris.kohya", "network_args": ["algo=lora"]})
    assert plain.locon_dim is None
    locon = load_config(None, {**REQUIRED, "network_module": "lycoris.kohya",
                               "network_args": ["algo=locon", "conv_dim=4", "conv_alpha=2"]})  # fmt: skip
    assert (locon.locon_dim, locon.locon_alpha) == (4, 2.0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["algo=loha"], r"algo=loha .*lora or locon"),
        (["algo=lokr"], r"algo=lokr"),
        (["rank_dropout=1"], r"rank_dropout=1: expected a number from 0 to below 1"),
        (["module_dropout=-0.1"], r"module_dropout"),
        (["conv_dim=eight"], r"conv_dim=eight"),
        (["conv_dim"], r"'conv_dim'.*key=value"),
        (["block_dims=2,2,2"], r"block_dims.*not supported"),
    ],
)
def test_network_args_that_are_not_implemented_or_out_of_range_are_refused(args, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, {**REQUIRED, "network_module": "networks.lora", "network_args": args})


def test_network_args_and_conv_dim_must_agree():
    with pytest.raises(ConfigError, match="conv_dim"):
        load_config(None, {**REQUIRED, "network_module": "networks.lora", "conv_dim": 4,
                           "network_args": ["conv_dim=8"]})  # fmt: skip
