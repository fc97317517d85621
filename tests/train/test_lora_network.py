"""The LoRA network: kohya's module set and names, its file format and hashes, agreement with peers, max-norm."""

from __future__ import annotations

import hashlib
import json
import re
from types import SimpleNamespace

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import StableDiffusionPipeline
from safetensors import safe_open

from bench.sd15_architecture import sd15_text_encoder, sd15_unet
from lib_sdtrain.errors import SDTrainError
from lib_sdtrain.models import ldm_keys
from lib_sdtrain.models.configs import unet_layout
from lib_sdtrain.models.loading import load_sd_model
from lib_sdtrain.models.saving import sd_model_to_ldm
from lib_sdtrain.network.kohya_file import load_lora, save_lora
from lib_sdtrain.network.lora import LoRAModule, LoRANetwork, NetworkSpec
from tests.train import kohya_reference as kohya


def randomize(network: LoRANetwork, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lora in network.all_loras():
            for p in (lora.lora_down.weight, lora.lora_up.weight):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)


def test_full_sd15_module_set_and_names_are_kohyas():
    with init_empty_weights():
        unet, text_encoder = sd15_unet(), sd15_text_encoder()
    network = LoRANetwork(unet, text_encoder, NetworkSpec(rank=4, alpha=1))
    names = set(network.modules_by_name())
    assert len(network.unet_loras) == 192  # 16 transformer blocks x 12 layers
    assert len(network.text_encoder_loras) == 72  # 12 layers x (q, k, v, out, fc1, fc2)
    for name in (
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        "lora_unet_down_blocks_0_attentions_0_proj_in",
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj",
        "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
        "lora_te_text_model_encoder_layers_11_mlp_fc2",
    ):
        assert name in names
    # Rank r costs r * (in + out) weights per Linear/1x1 layer: 2.36M at rank 4, a 4.7 MB fp16 file.
    layers = [lora._layer[0] for lora in network.all_loras()]
    expected = sum(4 * (getattr(m, "in_features", 0) or m.in_channels) for m in layers) + sum(
        4 * (getattr(m, "out_features", 0) or m.out_channels) for m in layers
    )
    assert sum(p.numel() for p in network.parameters()) == expected == 2_359_296

    locon = LoRANetwork(unet, text_encoder, NetworkSpec(rank=4, conv_rank=4, conv_alpha=1))
    conv_names = set(locon.modules_by_name()) - names
    assert "lora_unet_down_blocks_0_resnets_0_conv1" in conv_names
    assert "lora_unet_down_blocks_0_downsamplers_0_conv" in conv_names
    assert "lora_unet_up_blocks_0_upsamplers_0_conv" in conv_names
    assert "lora_unet_down_blocks_0_resnets_0_time_emb_proj" in conv_names  # Linear inside a ResnetBlock2D


def test_file_format_metadata_and_hashes(tiny_sd_dir, tmp_path):
    model = load_sd_model(tiny_sd_dir)
    network = LoRANetwork(model.unet, model.text_encoder, NetworkSpec(rank=4, alpha=2, conv_rank=2, conv_alpha=1))
    randomize(network)
    path = save_lora(network.kohya_state_dict(), tmp_path / "x.safetensors", {"ss_network_dim": 4, "note": "n"}, "fp16")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        keys = list(f.keys())
        alpha = f.get_tensor("lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha")
        conv_down = f.get_tensor("lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight")
    assert all(re.fullmatch(r"lora_(unet|te)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)", k) for k in keys)
    assert alpha.ndim == 0 and float(alpha) == 2 and alpha.dtype == torch.float16
    assert conv_down.shape[1:] == (32, 3, 3)  # LoCon: the down projection keeps the 3x3 kernel
    assert metadata["ss_network_dim"] == "4" and metadata["note"] == "n"

    # The hash kohya defines, recomputed from the written file: sha256 of the tensor data after the header, with only
    # ss_* metadata in the header (so the data region is what counts).
    raw = path.read_bytes()
    data = raw[8 + int.from_bytes(raw[:8], "little") :]
    assert metadata["sshs_model_hash"] == hashlib.sha256(data).hexdigest()
    assert len(metadata["sshs_legacy_hash"]) == 8

    state, _ = load_lora(path)
    fresh = LoRANetwork(model.unet, model.text_encoder, NetworkSpec(rank=4, alpha=2, conv_rank=2, conv_alpha=1))
    fresh.load_kohya_state_dict(state)
    saved, loaded = network.kohya_state_dict(), fresh.kohya_state_dict()
    assert all(torch.equal(saved[k].half().float(), loaded[k]) for k in saved)
    wrong = LoRANetwork(model.unet, model.text_encoder, NetworkSpec(rank=8))
    with pytest.raises(SDTrainError, match="does not fit"):
        wrong.load_kohya_state_dict(state)


def test_keys_resolve_to_webui_ldm_modules(tiny_sd_dir):
    """Every key maps onto the ldm layout the WebUI's Lora extension patches: the layer it names exists there."""
    model = load_sd_model(tiny_sd_dir)
    network = LoRANetwork(model.unet, model.text_encoder, NetworkSpec(rank=4, conv_rank=4))
    ldm_state = sd_model_to_ldm(model)
    layout = unet_layout(model.unet.config)
    unet_paths = {n for n, _ in model.unet.named_modules()}
    te_paths = {n for n, _ in model.text_encoder.named_modules()}
    for name in network.modules_by_name():
        prefix, paths = ("lora_unet_", unet_paths) if name.startswith("lora_unet_") else ("lora_te_", te_paths)
        # kohya names are module paths with "." -> "_": find the one real path that produces this name.
        path = next(p for p in paths if p.replace(".", "_") == name[len(prefix) :])
        if prefix == "lora_unet_":
            ldm_key = ldm_keys.unet_ldm_ref(path + ".weight", layout).key
        else:
            ldm_key = ldm_keys.sd1_text_ldm_ref(path + ".weight").key
        assert ldm_key in ldm_state, (name, ldm_key)


def _peer_module_path(diffusers_key: str) -> tuple[str, str]:
    """Module path from the keys diffusers' own kohya converter produces (its legacy, non-PEFT naming)."""
    component, _, rest = diffusers_key.partition(".")
    path = re.sub(r"\.(lora|lora_linear_layer)\.(down|up)\.weight$", "", rest)
    if component == "unet":  # attention layers are named after the legacy attention processors
        path = re.sub(r"\.processor\.to_(q|k|v)_lora\.(down|up)\.weight$", r".to_\1", path)
        path = re.sub(r"\.processor\.to_out_lora\.(down|up)\.weight$", ".to_out.0", path)
    else:
        path = re.sub(r"\.to_(q|k|v)_lora\.(down|up)\.weight$", r".\1_proj", path)
        path = re.sub(r"\.to_out_lora\.(down|up)\.weight$", ".out_proj", path)
    return component, path


def test_diffusers_reads_our_file_and_reproduces_our_outputs(tiny_sd_dir, tmp_path):
    """diffusers' kohya converter (StableDiffusionPipeline.lora_state_dict, peer code) names the same layers, and
    applying its tensors as W += alpha/rank * up @ down gives the outputs of our attached network."""
    model = load_sd_model(tiny_sd_dir)
    network = LoRANetwork(model.unet, model.text_encoder, NetworkSpec(rank=4, alpha=2))
    randomize(network, seed=3)
    path = save_lora(network.kohya_state_dict(), tmp_path / "peer.safetensors", {}, "float")

    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ids = model.tokenizer(["a photo of sks"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        network.attach()
        context = model.text_encoder(ids)[0]
        ours = model.unet(sample, 500, encoder_hidden_states=context).sample
        network.detach()

    peer_state, peer_alphas = StableDiffusionPipeline.lora_state_dict(str(tmp_path), weight_name=path.name)
    base = load_sd_model(tiny_sd_dir)
    modules = {"unet": dict(base.unet.named_modules()), "text_encoder": dict(base.text_encoder.named_modules())}
    downs = [k for k in peer_state if k.endswith("down.weight")]
    assert len(downs) == len(list(network.all_loras()))
    with torch.no_grad():
        for down_key in downs:
            up = peer_state[down_key.replace("down.weight", "up.weight")]
            down = peer_state[down_key]
            component, module_path = _peer_module_path(down_key)
            # diffusers keeps alphas under either the down key or the module path
            alpha = peer_alphas.get(down_key + ".alpha", peer_alphas.get(f"{component}.{module_path}.alpha"))
            layer = modules[component][module_path]
            delta = up.flatten(1) @ down.flatten(1) * (float(alpha) / down.shape[0])
            layer.weight += delta.reshape(layer.weight.shape)
        context = base.text_encoder(ids)[0]
        merged = base.unet(sample, 500, encoder_hidden_states=context).sample
    torch.testing.assert_close(merged, ours, rtol=1e-4, atol=1e-4)


def test_merge_into_model_matches_attached_forward(tiny_sd_dir):
    model = load_sd_model(tiny_sd_dir)
    network = LoRANetwork(model.unet, None, NetworkSpec(rank=4, alpha=4, conv_rank=2, conv_alpha=2))
    randomize(network, seed=5)
    sample, context = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 64)
    with torch.no_grad():
        network.attach()
        attached = model.unet(sample, 10, encoder_hidden_states=context).sample
        network.merge_into_model()
        merged = model.unet(sample, 10, encoder_hidden_states=context).sample
    torch.testing.assert_close(merged, attached, rtol=1e-4, atol=1e-4)


def test_new_network_changes_nothing_until_trained(tiny_sd_dir):
    model = load_sd_model(tiny_sd_dir)
    sample, context = torch.randn(1, 4, 8, 8), torch.randn(1, 5, 64)
    with torch.no_grad():
        before = model.unet(sample, 10, encoder_hidden_states=context).sample
        network = LoRANetwork(model.unet, model.text_encoder, NetworkSpec(rank=8, alpha=4)).attach()
        after = model.unet(sample, 10, encoder_hidden_states=context).sample
        network.detach()
    assert torch.equal(before, after)


def as_kohya_module(lora: LoRAModule, dropout: float, rank_dropout: float, module_dropout: float) -> SimpleNamespace:
    """An attached LoRAModule of SD-Train under the attribute names kohya's LoRAModule.forward reads, training (kohya
    leaves an unset dropout None)."""
    return SimpleNamespace(
        org_forward=lora._base_forward, lora_down=lora.lora_down, lora_up=lora.lora_up, lora_dim=lora.rank,
        scale=lora.scale, multiplier=lora.multiplier, dropout=dropout or None, rank_dropout=rank_dropout or None,
        module_dropout=module_dropout or None, training=True,
    )  # fmt: skip


@pytest.mark.parametrize(("dropout", "rank_dropout", "module_dropout"), [(0.3, 0, 0), (0, 0.5, 0), (0.1, 0.25, 0.5)])
def test_the_three_dropouts_are_kohyas(dropout, rank_dropout, module_dropout):
    layers = {"linear": torch.nn.Linear(12, 10), "conv": torch.nn.Conv2d(4, 6, 3, padding=1)}
    inputs = {"linear": torch.randn(3, 5, 12), "conv": torch.randn(3, 4, 6, 6)}
    for kind, layer in layers.items():
        lora = LoRAModule("lora_test", layer, 4, 2.0, dropout, rank_dropout, module_dropout)
        torch.nn.init.normal_(lora.lora_up.weight)
        lora.attach()
        kohya_lora = as_kohya_module(lora, dropout, rank_dropout, module_dropout)
        for seed in range(4):
            torch.manual_seed(seed)
            ours = lora(inputs[kind])
            torch.manual_seed(seed)
            theirs = kohya.lora_module_forward(kohya_lora, inputs[kind])
            torch.testing.assert_close(ours, theirs, msg=f"{kind}, seed {seed}")
        lora.eval()  # no dropout at all outside training (samples)
        plain = lora._base_forward(inputs[kind]) + lora.lora_up(lora.lora_down(inputs[kind])) * lora.scale
        torch.testing.assert_close(lora(inputs[kind]), plain)


def test_network_args_dropouts_reach_the_modules_and_the_metadata(tiny_sd_dir, sks_dataset, tmp_path):
    from lib_sdtrain.train.loop import train
    from lib_sdtrain.train.settings import load_config
    from tests.train.conftest import train_settings

    args = ["rank_dropout=0.2", "module_dropout=0.1"]
    result = train(load_config(None, train_settings(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=2,
                                                    network_args=args)))  # fmt: skip
    metadata = load_lora(result.output)[1]
    assert json.loads(metadata["ss_network_args"]) == {"rank_dropout": "0.2", "module_dropout": "0.1"}


@pytest.mark.parametrize(
    ("spec", "refused"),
    [
        (
            NetworkSpec(rank=1281),
            "network_dim 1281 is above the width of every layer it trains in this model \\(at most 1280\\)",
        ),
        (NetworkSpec(rank=100_000), "Choose network_dim <= 1280"),
        (NetworkSpec(rank=8, conv_rank=20_000, conv_alpha=1), "conv_dim 20000 is above .* \\(at most 1280\\)"),
        (NetworkSpec(rank=769, train_unet=False), "network_dim 769 .* \\(at most 768\\)"),  # the text encoder's width
    ],
)
def test_a_rank_above_every_layers_width_is_refused_before_any_module_is_made(spec, refused):
    with init_empty_weights():
        unet, text_encoder = sd15_unet(), sd15_text_encoder()
    with pytest.raises(SDTrainError, match=refused):
        LoRANetwork(unet, text_encoder, spec)


def test_a_rank_as_wide_as_the_widest_layer_is_kept_as_kohya_keeps_it():
    with init_empty_weights():
        unet, text_encoder = sd15_unet(), sd15_text_encoder()
        network = LoRANetwork(unet, text_encoder, NetworkSpec(rank=1280))
    ranks = {lora.lora_down.weight.shape[0] for lora in network.all_loras()}
    assert ranks == {1280}  # narrower layers too: their extra ranks add nothing, but kohya makes them


# --- kohya's max-norm regularisation (scale_weight_norms) ----------------------------------------------------------


def test_max_norm_scales_each_module_down_to_the_limit(tiny_sd_dir):
    from lib_sdtrain.models.loading import load_sd_model

    model = load_sd_model(tiny_sd_dir)
    network = LoRANetwork(model.unet, model.text_encoder, NetworkSpec(rank=4, alpha=2, conv_rank=2, conv_alpha=1))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i, lora in enumerate(network.all_loras()):
            lora.lora_up.weight.copy_(torch.randn(lora.lora_up.weight.shape, generator=generator) * (i % 3))
    before = [float(lora.scaled_update().norm()) for lora in network.all_loras()]
    limit = sorted(before)[len(before) // 2]
    keys_scaled, mean_norm, max_norm = network.apply_max_norm(limit)
    after = [float(lora.scaled_update().norm()) for lora in network.all_loras()]
    assert keys_scaled == sum(n > limit for n in before) > 0
    assert max(after) <= limit * (1 + 1e-5) and max_norm == pytest.approx(max(after), rel=1e-5)
    assert mean_norm == pytest.approx(sum(min(n, limit) for n in before) / len(before), rel=1e-5)
    for b, a in zip(before, after, strict=True):
        assert a == pytest.approx(min(b, limit), rel=1e-4, abs=1e-7)  # norms below the limit are left alone
