"""train/noise_and_loss.py: kohya's noise, timestep and loss options, checked against kohya's code and in runs."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from lib_sdtrain.errors import ConfigError
from lib_sdtrain.network.kohya_file import load_lora
from lib_sdtrain.train import noise_and_loss as nl
from lib_sdtrain.train.loop import Trainer, train
from lib_sdtrain.train.settings import config_from_dict, validate_config
from lib_sdtrain.utils.progress import CallbackProgress
from tests.train import kohya_reference as kohya
from tests.train.conftest import config_for


def _sd_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


# --- the options' checks -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"min_timestep": 500, "max_timestep": 500}, "min_timestep"),
        ({"max_timestep": 1001}, "max_timestep"),
        ({"adaptive_noise_scale": 0.01}, "adaptive_noise_scale needs noise_offset"),
        ({"noise_offset_random_strength": True}, "needs noise_offset"),
        ({"ip_noise_gamma_random_strength": True}, "needs ip_noise_gamma"),
        ({"v_parameterization": True, "v_pred_like_loss": 0.2}, "v_pred_like_loss"),
        ({"dim_from_weights": True}, "needs network_weights"),
        ({"network_module": None, "scale_weight_norms": 1.0}, "apply to a LoRA"),
    ],
)
def test_combinations_kohya_refuses_or_that_would_do_nothing(overrides, message, tmp_path):
    settings = {"pretrained_model_name_or_path": "m", "train_data_dir": "d", "network_module": "networks.lora"}
    with pytest.raises(ConfigError, match=message):
        validate_config(config_from_dict({**settings, **overrides}))


def test_scale_v_pred_loss_needs_a_v_model(tiny_sd_dir, sks_dataset, tmp_path):
    with pytest.raises(ConfigError, match="scale_v_pred_loss_like_noise_pred"):
        Trainer(config_for(tiny_sd_dir, sks_dataset, tmp_path, scale_v_pred_loss_like_noise_pred=True), None, None)


# --- noise ---------------------------------------------------------------------------------------------------------


def test_noise_offset_with_random_strength_and_adaptive_scale_as_kohya_computes_it():
    latents = torch.tensor([[[[1.0, 3.0]], [[-4.0, 0.0]]]])  # channel means 2 and -2
    noise = torch.zeros(1, 2, 1, 2)
    generator = torch.Generator().manual_seed(3)
    strength = nl.random_strength(0.1, True, generator)
    got = nl.apply_noise_offset(latents, noise, strength, 0.05, generator)

    args = SimpleNamespace(noise_offset=0.1, noise_offset_random_strength=True, adaptive_noise_scale=0.05)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)  # kohya draws from torch's global generator: the same draws, in the same order
        expected = kohya.noise_with_offset(args, latents, noise)
        torch.manual_seed(3)
        expected_strength = torch.rand(1).item() * 0.1
    assert strength == pytest.approx(expected_strength) and 0 <= strength < 0.1
    torch.testing.assert_close(got, expected)
    # a negative adaptive scale cannot make the offset negative (kohya clamps at 0)
    clamped = nl.apply_noise_offset(latents, noise, 0.05, -1.0, torch.Generator().manual_seed(0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.testing.assert_close(clamped, kohya.apply_noise_offset(latents, noise, 0.05, -1.0))
    assert not clamped.any()


def test_multires_noise_matches_kohyas_pyramid_and_is_low_frequency(monkeypatch):
    noise = torch.randn(8, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    got = nl.pyramid_noise(noise, 6, 0.3, torch.Generator().manual_seed(5))

    # kohya draws each layer's r from Python's random and the layers from torch's; SD-Train draws both, in the same
    # order, from its generator: kohya's random.random() is made a draw from torch's global generator to match
    monkeypatch.setattr(kohya, "random", SimpleNamespace(random=lambda: torch.rand(()).item()))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        torch.testing.assert_close(got, kohya.pyramid_noise_like(noise.clone(), "cpu", 6, 0.3))
    for size, iterations, discount in (((2, 4, 24, 40), 3, 0.8), ((1, 4, 8, 8), 10, 0.5)):  # non-square; to 1 pixel
        other = torch.randn(size, generator=torch.Generator().manual_seed(1))
        ours = nl.pyramid_noise(other, iterations, discount, torch.Generator().manual_seed(5))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(5)
            theirs = kohya.pyramid_noise_like(other.clone(), "cpu", iterations, discount)
        torch.testing.assert_close(ours, theirs, msg=f"{size}, {iterations} iterations, discount {discount}")
    assert got.std().item() == pytest.approx(1.0, abs=1e-5)

    # the coarse layers correlate neighbouring pixels, which white noise does not
    def neighbour_correlation(x):
        return torch.corrcoef(torch.stack([x[..., 1:].flatten(), x[..., :-1].flatten()]))[0, 1].item()

    assert abs(neighbour_correlation(noise)) < 0.02 and neighbour_correlation(got) > 0.02
    strong = nl.pyramid_noise(noise, 6, 0.8, torch.Generator().manual_seed(5))
    assert neighbour_correlation(strong) > 0.1


def test_input_perturbation_adds_gamma_times_normal_noise():
    noise = torch.ones(2, 4, 3, 3)
    got = nl.perturbed_noise(noise, 0.1, torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, noise + 0.1 * torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(7)))


# --- timesteps and the schedule ------------------------------------------------------------------------------------


def test_timesteps_stay_within_min_and_max(tiny_sd_dir, sks_dataset, tmp_path):
    assert nl.timestep_range(None, None, 1000) == (0, 1000)
    drawn = nl.sample_timesteps(4000, 100, 110, torch.Generator().manual_seed(0))
    assert drawn.min() == 100 and drawn.max() == 109
    trainer = Trainer(config_for(tiny_sd_dir, sks_dataset, tmp_path, min_timestep=300, max_timestep=302), None, None)
    trainer.setup()
    seen = []
    real_predict = trainer._predict
    trainer._predict = lambda noisy, timesteps, *rest: seen.append(timesteps) or real_predict(noisy, timesteps, *rest)
    batches = trainer._epoch_batches(0)
    for i in range(3):
        trainer._loss(trainer._prepare_batch(batches, 0, i))
    assert set(torch.cat(seen).tolist()) <= {300, 301}


def test_zero_terminal_snr_rescales_the_training_schedule_only(tiny_sd2_dir, sks_dataset, tmp_path):
    scheduler = _sd_scheduler()
    original = scheduler.alphas_cumprod.clone()
    nl.rescale_zero_terminal_snr(scheduler)
    assert scheduler.alphas_cumprod[-1] == 0
    assert scheduler.alphas_cumprod[0].item() == pytest.approx(original[0].item(), rel=1e-5)
    assert (scheduler.alphas_cumprod[1:] < scheduler.alphas_cumprod[:-1]).all()
    theirs = _sd_scheduler()
    kohya.fix_noise_scheduler_betas_for_zero_terminal_snr(theirs)
    for name in ("betas", "alphas", "alphas_cumprod"):
        torch.testing.assert_close(getattr(scheduler, name), getattr(theirs, name), atol=1e-6, rtol=1e-5, msg=name)

    config = config_for(tiny_sd2_dir, sks_dataset, tmp_path, zero_terminal_snr=True, v_parameterization=True)
    trainer = Trainer(config, None, None)
    assert trainer.noise_scheduler.alphas_cumprod[-1] == 0
    assert trainer.model.noise_scheduler().alphas_cumprod[-1] > 0  # samples keep the usual schedule
    torch.testing.assert_close(trainer.snr, nl.snr_table(original))  # kohya's all_snr is taken before the fix


# --- the loss ------------------------------------------------------------------------------------------------------


def test_loss_types_and_huber_schedules_match_kohyas_formulas():
    """SD-Train's threshold (nl.huber_c) and unreduced loss against kohya's get_huber_threshold_if_needed and
    conditional_loss (reduction "none"), for each loss type, schedule, huber_c and huber_scale."""
    scheduler = _sd_scheduler()
    generator = torch.Generator().manual_seed(0)
    inputs = [
        (torch.tensor([0.0, 1.0, -3.0, 0.5]).view(2, 1, 1, 2), torch.tensor([0.5, -1.0, 1.0, 0.5]).view(2, 1, 1, 2)),
        (torch.randn(3, 4, 5, 6, generator=generator) * 2, torch.randn(3, 4, 5, 6, generator=generator)),
    ]
    timesteps = {2: torch.tensor([0, 999]), 3: torch.tensor([0, 250, 999])}
    for (prediction, target), loss_type, schedule, huber_c, huber_scale in itertools.product(
        inputs, ("l2", "l1", "huber", "smooth_l1"), ("constant", "exponential", "snr"), (0.1, 0.7), (1.0, 2.0)
    ):
        case = f"{loss_type}, {schedule}, huber_c {huber_c}, huber_scale {huber_scale}, batch {len(prediction)}"
        t = timesteps[len(prediction)]
        args = SimpleNamespace(loss_type=loss_type, huber_schedule=schedule, huber_c=huber_c, huber_scale=huber_scale)
        theirs_c = kohya.get_huber_threshold_if_needed(args, t, scheduler)
        ours_c = None
        if theirs_c is not None:
            ours_c = nl.huber_c(schedule, huber_c, huber_scale, t, scheduler.alphas_cumprod, 1000)
            torch.testing.assert_close(ours_c, theirs_c, msg=case)
        theirs = kohya.conditional_loss(prediction, target, loss_type, "none", theirs_c)
        torch.testing.assert_close(nl.elementwise_loss(prediction, target, loss_type, ours_c), theirs, msg=case)


def test_snr_weights_match_kohyas_formulas():
    """SD-Train's snr_weighted against kohya's post_process_loss (min-SNR, v-pred scaling, v_pred_like_loss and
    debiased estimation, in kohya's order), every combination, for epsilon and v-prediction."""
    snr = torch.tensor([2000.0, 4.0, 0.25])  # above kohya's cap of 1000, and below 1
    loss = torch.tensor([1.0, 2.0, 3.0])
    timesteps = torch.arange(3)
    scheduler = SimpleNamespace(all_snr=snr)  # kohya reads each timestep's SNR from the scheduler's all_snr
    for v_prediction, gamma, scale_v, like_loss, debiased in itertools.product(
        (False, True), (None, 5), (False, True), (None, 0.2), (False, True)
    ):
        options = {"min_snr_gamma": gamma, "scale_v_pred_loss_like_noise_pred": scale_v,
                   "v_pred_like_loss": like_loss, "debiased_estimation_loss": debiased}  # fmt: skip
        args = SimpleNamespace(v_parameterization=v_prediction, **options)
        expected = kohya.post_process_loss(loss.clone(), args, timesteps, scheduler)
        torch.testing.assert_close(nl.snr_weighted(loss, snr, v_prediction, **options), expected, msg=str(args))


# --- training with everything on -----------------------------------------------------------------------------------


def test_training_with_every_option_stays_finite_and_is_recorded(tiny_sd_dir, sks_dataset, tmp_path):
    events = []
    progress = CallbackProgress(lambda event, payload: events.append((event, payload)))
    config = config_for(
        tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=4, min_timestep=100, max_timestep=900,
        noise_offset=0.1, noise_offset_random_strength=True, adaptive_noise_scale=0.01,
        multires_noise_iterations=6, multires_noise_discount=0.3, ip_noise_gamma=0.1,
        ip_noise_gamma_random_strength=True, zero_terminal_snr=True, debiased_estimation_loss=True,
        v_pred_like_loss=0.1, min_snr_gamma=5, loss_type="huber", huber_schedule="exponential", huber_c=0.1,
        scale_weight_norms=0.001, network_multiplier=0.8,
    )  # fmt: skip
    result = train(config, progress=progress)
    assert result.steps == 4 and all(math.isfinite(x) for x in result.losses)
    advances = [p for e, p in events if e == "advance"]
    assert all("Keys Scaled" in p and "Average key norm" in p for p in advances)
    assert advances[-1]["Keys Scaled"] > 0  # a tiny limit: the trained modules are scaled
    weights, meta = load_lora(result.output)
    network_norms = _update_norms(weights)
    assert max(network_norms) <= 0.001 * (1 + 1e-3)
    assert meta["ss_loss_type"] == "huber" and meta["ss_huber_schedule"] == "exponential"
    assert meta["ss_huber_c"] == "0.1" and meta["ss_huber_scale"] == "1.0"
    assert meta["ss_multires_noise_iterations"] == "6" and meta["ss_multires_noise_discount"] == "0.3"
    assert meta["ss_ip_noise_gamma"] == "0.1" and meta["ss_ip_noise_gamma_random_strength"] == "True"
    assert meta["ss_zero_terminal_snr"] == "True" and meta["ss_debiased_estimation"] == "True"
    assert meta["ss_scale_weight_norms"] == "0.001" and meta["ss_adaptive_noise_scale"] == "0.01"
    assert meta["ss_noise_offset_random_strength"] == "True"
    assert meta["modelspec.timestep_range"] == "100,900"


def test_v_model_training_with_its_loss_options_stays_finite(tiny_sd2_dir, sks_dataset, tmp_path):
    config = config_for(
        tiny_sd2_dir, sks_dataset, tmp_path, max_train_steps=3, v_parameterization=True, zero_terminal_snr=True,
        scale_v_pred_loss_like_noise_pred=True, debiased_estimation_loss=True, loss_type="smooth_l1",
        huber_schedule="snr", max_timestep=1000,
    )  # fmt: skip
    result = train(config)
    assert result.steps == 3 and all(math.isfinite(x) for x in result.losses)
    assert load_lora(result.output)[1]["modelspec.timestep_range"] == "0,1000"


def _update_norms(weights: dict[str, torch.Tensor]) -> list[float]:
    norms = []
    for key in weights:
        if not key.endswith(".lora_down.weight"):
            continue
        name = key.split(".")[0]
        down, up = weights[key].float(), weights[f"{name}.lora_up.weight"].float()
        scale = float(weights[f"{name}.alpha"]) / down.shape[0]
        if down.ndim == 2:
            delta = up @ down
        elif down.shape[2:] == (1, 1):
            delta = up.flatten(1) @ down.flatten(1)
        else:
            delta = torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
        norms.append(float((delta * scale).norm()))
    return norms
