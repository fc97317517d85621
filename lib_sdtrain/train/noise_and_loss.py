"""The noise, timestep and loss options of kohya sd-scripts (v0.9.x), as small functions the training step calls.

Per step, in kohya's order (train_util.get_noise_noisy_latents_and_timesteps, train_network.py):

    noise = randn                                        (+ noise_offset, optionally random and adaptive)
    noise = pyramid_noise(noise)                         multires_noise_iterations
    timesteps in [min_timestep, max_timestep)
    noisy = add_noise(latents, noise + gamma * randn)    ip_noise_gamma (input perturbation)
    loss  = l2 / l1 / huber / smooth_l1 per element      loss_type, huber_c by huber_schedule
    loss *= prior-loss weights, then by SNR: min_snr_gamma, scale_v_pred_loss_like_noise_pred, v_pred_like_loss,
            debiased_estimation_loss

Every random draw takes the run's noise generator (a CPU torch.Generator), so a seed repeats a run; kohya draws
from the global generators instead. With none of these options set the draws are exactly those of plain training.
The SNR table the weights read is the schedule's before zero_terminal_snr rescales it, as kohya computes all_snr
(prepare_scheduler_for_custom_training) before fix_noise_scheduler_betas_for_zero_terminal_snr.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lib_sdtrain.errors import ConfigError
from lib_sdtrain.train.config import HUBER_SCHEDULES, LOSS_TYPES

SNR_CAP = 1000.0
"""kohya caps the SNR at 1000 where it divides by it (the SNR of timestep 0 is near 1/beta_0)."""


# --- noise -----------------------------------------------------------------------------------------------------------


def random_strength(value: float, random: bool, generator: torch.Generator) -> float:
    """kohya's *_random_strength: a uniform draw in [0, value) per step when `random`, else `value`."""
    if not random:
        return value
    return float(torch.rand((), generator=generator)) * value


def apply_noise_offset(
    latents: torch.Tensor,
    noise: torch.Tensor,
    offset: float,
    adaptive_noise_scale: float | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """Offset noise (kohya's apply_noise_offset): one normal value per image and channel, times `offset`, added to
    the noise. With adaptive_noise_scale the offset of each channel grows by scale * |the latents' channel mean|
    (clamped at 0, for a negative scale)."""
    strength: float | torch.Tensor = offset
    if adaptive_noise_scale is not None:
        channel_mean = latents.float().mean(dim=(2, 3), keepdim=True).abs()
        strength = torch.clamp(offset + adaptive_noise_scale * channel_mean, min=0.0)
    per_channel = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator).to(noise.device)
    return noise + strength * per_channel


def pyramid_noise(noise: torch.Tensor, iterations: int, discount: float, generator: torch.Generator) -> torch.Tensor:
    """Multi-resolution noise (kohya's pyramid_noise_like): adds `iterations` layers of coarser noise, layer i drawn
    at the size divided by r**i (r uniform in [2, 4) per layer), upscaled bilinearly and weighted discount**i; stops
    after a layer of 1 pixel; the sum is divided by its standard deviation (back to about unit variance)."""
    batch, channels, height, width = noise.shape
    noise = noise.clone()
    for i in range(iterations):
        r = float(torch.rand((), generator=generator)) * 2 + 2
        h, w = max(1, int(height / r**i)), max(1, int(width / r**i))
        layer = torch.randn((batch, channels, h, w), generator=generator).to(noise.device, noise.dtype)
        noise += F.interpolate(layer, size=(height, width), mode="bilinear", align_corners=False) * discount**i
        if h == 1 or w == 1:
            break
    return noise / noise.std()


def perturbed_noise(noise: torch.Tensor, gamma: float, generator: torch.Generator) -> torch.Tensor:
    """Input perturbation (kohya's ip_noise_gamma, arXiv 2301.11706): the noise added to the latents gets an extra
    gamma * N(0, 1); the target stays the unperturbed noise."""
    return noise + gamma * torch.randn(noise.shape, generator=generator).to(noise.device, noise.dtype)


# --- timesteps and the schedule ----------------------------------------------------------------------------------


def timestep_range(min_timestep: int | None, max_timestep: int | None, num_train_timesteps: int) -> tuple[int, int]:
    """[low, high) of the training timesteps: kohya's min_timestep (default 0) and max_timestep (default the
    schedule's length; exclusive, as torch.randint)."""
    low = 0 if min_timestep is None else min_timestep
    high = num_train_timesteps if max_timestep is None else max_timestep
    if not 0 <= low < high <= num_train_timesteps:
        raise ConfigError(
            f"min_timestep {low} and max_timestep {high} must satisfy 0 <= min_timestep < max_timestep <= "
            f"{num_train_timesteps}."
        )
    return low, high


def sample_timesteps(batch: int, low: int, high: int, generator: torch.Generator) -> torch.Tensor:
    """One uniform timestep per image in [low, high)."""
    return torch.randint(low, high, (batch,), generator=generator)


def zero_terminal_snr_betas(betas: torch.Tensor) -> torch.Tensor:
    """Betas rescaled so the last timestep is pure noise (arXiv 2305.08891, Algorithm 1): sqrt(alphas_cumprod) is
    shifted so its last value is 0 and scaled so its first value is unchanged."""
    root = torch.cumprod(1 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    cumprod = root**2
    alphas = torch.cat([cumprod[:1], cumprod[1:] / cumprod[:-1]])
    return 1 - alphas


def rescale_zero_terminal_snr(scheduler) -> None:
    """kohya's zero_terminal_snr: the training scheduler's betas, alphas and alphas_cumprod rescaled in place (the
    samples' schedulers are built from the model's config, not this one, so sampling is unchanged, as in kohya)."""
    betas = zero_terminal_snr_betas(scheduler.betas)
    scheduler.betas = betas
    scheduler.alphas = 1.0 - betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)


def snr_table(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio per timestep, alpha_bar / (1 - alpha_bar) (kohya's all_snr)."""
    return alphas_cumprod / (1.0 - alphas_cumprod)


# --- the loss --------------------------------------------------------------------------------------------------------


def huber_c(
    schedule: str,
    c: float,
    scale: float,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    num_train_timesteps: int,
) -> torch.Tensor:
    """The Huber threshold per image (kohya's get_timesteps_and_huber_c; huber_scale as later sd-scripts apply it):
    constant c * scale; exponential exp(ln(c) * t / T) * scale (1 at t = 0, c at t = T); snr (1 - c) / (1 + sigma)^2
    + c with sigma = sqrt((1 - alpha_bar) / alpha_bar) (near 1 at low noise, c at high noise; scale not used)."""
    t = timesteps.cpu()
    if schedule == "constant":
        return torch.full(t.shape, c * scale)
    if schedule == "exponential":
        return torch.exp(math.log(c) / num_train_timesteps * t) * scale
    if schedule == "snr":
        bar = alphas_cumprod.cpu()[t]
        sigma = ((1.0 - bar) / bar) ** 0.5
        return (1 - c) / (1 + sigma) ** 2 + c
    raise ConfigError(f"huber_schedule must be one of {', '.join(HUBER_SCHEDULES)}, not {schedule!r}.")


def elementwise_loss(
    prediction: torch.Tensor, target: torch.Tensor, loss_type: str, c: torch.Tensor | None = None
) -> torch.Tensor:
    """The unreduced loss (kohya's conditional_loss with reduction none): l2 (squared error), l1 (absolute error),
    huber 2c(sqrt(d^2 + c^2) - c) and smooth_l1 2(sqrt(d^2 + c^2) - c), c per image (see huber_c)."""
    if loss_type == "l2":
        return F.mse_loss(prediction, target, reduction="none")
    if loss_type == "l1":
        return F.l1_loss(prediction, target, reduction="none")
    if loss_type in ("huber", "smooth_l1"):
        assert c is not None, "huber and smooth_l1 need huber_c"
        c = c.to(prediction.device, prediction.dtype).view(-1, *([1] * (prediction.ndim - 1)))
        smooth = torch.sqrt((prediction - target) ** 2 + c**2) - c
        return 2 * c * smooth if loss_type == "huber" else 2 * smooth
    raise ConfigError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, not {loss_type!r}.")


def min_snr_weight(snr: torch.Tensor, gamma: float, v_prediction: bool) -> torch.Tensor:
    """Min-SNR weighting (kohya's apply_snr_weight): min(snr, gamma) / snr, or / (snr + 1) for v-prediction."""
    return torch.clamp(snr, max=gamma) / (snr + 1 if v_prediction else snr)


def v_pred_scale(snr: torch.Tensor) -> torch.Tensor:
    """snr / (snr + 1) with the SNR capped at SNR_CAP (kohya's get_snr_scale): the ratio of an epsilon loss to the
    v loss of the same error; scale_v_pred_loss_like_noise_pred multiplies by it."""
    snr = torch.clamp(snr, max=SNR_CAP)
    return snr / (snr + 1)


def add_v_pred_like_loss(loss: torch.Tensor, snr: torch.Tensor, weight: float) -> torch.Tensor:
    """kohya's v_pred_like_loss: adds weight * the loss as a v-prediction would weigh it (loss / v_pred_scale)."""
    return loss + loss / v_pred_scale(snr) * weight


def debiased_weight(snr: torch.Tensor, v_prediction: bool) -> torch.Tensor:
    """Debiased estimation (kohya's apply_debiased_estimation, arXiv 2310.08442): 1 / sqrt(snr), or 1 / (snr + 1) for
    v-prediction, with the SNR capped at SNR_CAP."""
    snr = torch.clamp(snr, max=SNR_CAP)
    return 1 / (snr + 1) if v_prediction else 1 / torch.sqrt(snr)


def snr_weighted(
    loss: torch.Tensor,
    snr: torch.Tensor,
    v_prediction: bool,
    min_snr_gamma: float | None = None,
    scale_v_pred_loss_like_noise_pred: bool = False,
    v_pred_like_loss: float | None = None,
    debiased_estimation_loss: bool = False,
) -> torch.Tensor:
    """The per-image loss with kohya's SNR-based weights applied in its order; `snr` is each image's timestep's."""
    snr = snr.to(loss.device)
    if min_snr_gamma:
        loss = loss * min_snr_weight(snr, min_snr_gamma, v_prediction)
    if scale_v_pred_loss_like_noise_pred:
        loss = loss * v_pred_scale(snr)
    if v_pred_like_loss:
        loss = add_v_pred_like_loss(loss, snr, v_pred_like_loss)
    if debiased_estimation_loss:
        loss = loss * debiased_weight(snr, v_prediction)
    return loss


def check_options(config, v_prediction: bool | None) -> None:
    """ConfigError for the combinations kohya refuses (train_util.verify_training_args) and for settings that would
    otherwise be accepted and do nothing; `v_prediction` is the model's objective (None: not known yet, those checks
    wait for the model)."""
    if config.scale_v_pred_loss_like_noise_pred and v_prediction is False:
        raise ConfigError("scale_v_pred_loss_like_noise_pred needs a v-prediction model (v_parameterization).")
    if config.v_pred_like_loss and v_prediction:
        raise ConfigError("v_pred_like_loss is for epsilon models; it cannot be used with v_parameterization.")
    if config.adaptive_noise_scale and not config.noise_offset:
        raise ConfigError("adaptive_noise_scale needs noise_offset (it adds to the offset), as in kohya.")
    if config.noise_offset_random_strength and not config.noise_offset:
        raise ConfigError("noise_offset_random_strength needs noise_offset (the largest strength drawn).")
    if config.ip_noise_gamma_random_strength and not config.ip_noise_gamma:
        raise ConfigError("ip_noise_gamma_random_strength needs ip_noise_gamma (the largest strength drawn).")
    if config.loss_type in ("huber", "smooth_l1") and config.huber_schedule == "exponential" and config.huber_c <= 0:
        raise ConfigError("huber_schedule exponential needs huber_c above 0.")
