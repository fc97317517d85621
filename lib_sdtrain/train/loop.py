"""The training loop: one explicit loop, in the spirit of diffusers' example scripts, for LoRA and full fine-tuning.

    result = train(load_config("lora.toml"))                 # CLI / headless
    result = train(config, model=webui_model, progress=p)    # the WebUI passes its loaded model and a progress

Per optimizer step: latents (cached or encoded now) -> noise (+ kohya's noise options) at random timesteps -> the
UNet predicts noise (or v) -> the loss, weighted by SNR if asked (noise_and_loss) -> backward, accumulate, clip, step.
Saves, samples, progress and cancel happen between steps. A NaN/inf loss stops the run before it can spoil a save.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lib_sdtrain.errors import Cancelled, ConfigError, OutputError, SDTrainError, UnsupportedModelError
from lib_sdtrain.models.sd_model import PredictionType, SDModel
from lib_sdtrain.network.kohya_file import SAVE_DTYPES, load_lora
from lib_sdtrain.network.lora import LoRANetwork, NetworkSpec, ranks_from_weights
from lib_sdtrain.train import data, noise_and_loss, text
from lib_sdtrain.train.config import TrainConfig, parse_network_args
from lib_sdtrain.train.kohya_keys import DIFFERING_DEFAULTS, UNUSED_WHEN_GIVEN
from lib_sdtrain.train.latent_cache import LatentCache, build_latent_cache, folder_items, latent_source, will_cache
from lib_sdtrain.train.optim import make_lr_scheduler, make_optimizer
from lib_sdtrain.train.output_lock import hold_output
from lib_sdtrain.train.outputs import (
    OWNER_KEY,
    epoch_save_interval,
    epoch_to_remove,
    lora_metadata,
    remove_old_save,
    save_extension,
    step_to_remove,
    write_checkpoint,
    write_lora,
)
from lib_sdtrain.train.prefetch import prefetched, worker_count
from lib_sdtrain.train.safe_save import SaveGuard, check_output_writable, check_room, is_write_error, rescue_folder
from lib_sdtrain.train.sampling import check_samplers, generate_samples, read_prompt_file
from lib_sdtrain.train.settings import validate_config
from lib_sdtrain.train.state import Position, load_state, restore_rng, save_state
from lib_sdtrain.train.tensorboard_log import TensorBoardLog
from lib_sdtrain.utils.files import check_safe_name
from lib_sdtrain.utils.progress import Progress

STORAGE_DEVICE = torch.device("cpu")
"""Where a module that this run does not need on the accelerator waits (the VAE with cached latents, the text encoder
with cached outputs); it comes back only for samples."""

WEIGHT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
MAX_NORM_LOGS = ("keys_scaled", "average_key_norm", "max_key_norm")
"""kohya's TensorBoard names (under max_norm/) of what scale_weight_norms reports after each step."""

OOM_ADVICE = (
    "Out of memory. Lower train_batch_size or the resolution, turn on gradient_checkpointing, use mixed_precision "
    "fp16/bf16, or a smaller network_dim. Everything saved so far is kept."
)


class TrainingDiverged(SDTrainError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    output: Path | None
    steps: int
    losses: list[float] = field(default_factory=list)
    state_dir: Path | None = None
    samples: list[Path] = field(default_factory=list)


@dataclass
class PreparedBatch:
    """One batch's data, made on the CPU ahead of its step: cached latents, or pixels for the VAE to encode; for
    SDXL, each item's six size ids (data.size_conditioning)."""

    items: list[data.TrainItem]
    captions: list[str]
    latents: torch.Tensor | None
    pixels: torch.Tensor | None
    time_ids: torch.Tensor | None = None


@dataclass
class Conditioning:
    """What the UNet is conditioned on: the text states, and for SDXL the pooled text embedding too."""

    states: torch.Tensor
    pooled: torch.Tensor | None = None

    def row(self, index: int) -> Conditioning:
        pooled = None if self.pooled is None else self.pooled[index].clone()
        return Conditioning(self.states[index].clone(), pooled)

    @staticmethod
    def stack(rows: list[Conditioning]) -> Conditioning:
        pooled = None if rows[0].pooled is None else torch.stack([r.pooled for r in rows if r.pooled is not None])
        return Conditioning(torch.stack([r.states for r in rows]), pooled)

    def to(self, device: torch.device | str) -> Conditioning:
        return Conditioning(self.states.to(device), None if self.pooled is None else self.pooled.to(device))


def _pinned(tensor: torch.Tensor) -> torch.Tensor:
    """Page-locked memory on CUDA machines, so the copy to the GPU runs alongside the step (non_blocking)."""
    return tensor.pin_memory() if torch.cuda.is_available() else tensor


class Trainer:
    """Holds what one run needs; `run()` is the loop. Split into small methods so each concern reads on its own."""

    unet_forward: Callable[..., Any]  # the UNet, or its torch.compile'd forward (_compile_unet)
    compiled_once: bool  # whether that forward has run compiled once (after that, a failure is the model's)

    def __init__(self, config: TrainConfig, model: SDModel | None, progress: Progress | None) -> None:
        validate_config(config)
        check_safe_name(config.output_name, "output_name")
        self.config = config
        self.progress = progress or Progress()
        self.items = data.collect_items(config)  # fail on a bad dataset before loading a model
        self.prompts = read_prompt_file(config.sample_prompts) if config.sample_prompts else []
        check_samplers(self.prompts, config.sample_sampler)
        check_dynamo_backend(config.dynamo_backend)
        check_output_writable(config.output_dir, config.output_name)  # in seconds, not after loading the model
        self.model = _with_vae(model or _load_model(config), config.vae)
        self.sdxl = self.model.version == "sdxl"
        if self.sdxl:
            _check_sdxl_run(config, self.model)
        self.output_dir = Path(config.output_dir)
        self.accelerator = _make_accelerator(config)
        self.device = self.accelerator.device
        self.noise_scheduler = self.model.noise_scheduler()
        noise_and_loss.check_options(config, self.model.v_prediction)
        self.timestep_range = noise_and_loss.timestep_range(
            config.min_timestep, config.max_timestep, self.noise_scheduler.config.num_train_timesteps
        )
        # kohya computes the SNR its loss weights read before zero_terminal_snr rescales the schedule
        self.snr = noise_and_loss.snr_table(self.noise_scheduler.alphas_cumprod)
        if config.zero_terminal_snr:
            noise_and_loss.rescale_zero_terminal_snr(self.noise_scheduler)
        # Each process its own noise (process 0 the seed's own), as it trains on other images.
        self.noise_generator = torch.Generator().manual_seed(config.seed + self.accelerator.process_index)
        self.network: LoRANetwork | None = None
        self.last_good_save: Path | None = None
        self.saves: list[Path] = []
        self.stop_note = ""
        """Set when the run stops early ("cancelled at step N of M"): the saves after it are not finished ones."""
        self.samples: list[Path] = []
        self.started_at = time.time()
        rescue = rescue_folder(config.output_name, self.started_at)
        self.guard = SaveGuard(self.output_dir, rescue, self.progress.message)

    # --- setup --------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        config, model = self.config, self.model
        for note in data.dataset_notes(config):
            self.progress.message(note)
        torch.manual_seed(config.seed)
        model.vae.requires_grad_(False).eval()
        model.unet.requires_grad_(False)
        for encoder in model.text_encoders:
            encoder.requires_grad_(False).to(self.device)
        self.offloaded: set[str] = set()
        """Names of the modules kept on STORAGE_DEVICE instead of self.device (see _place_modules)."""
        self.text_cache: dict[str, Conditioning] | None = None
        self.latent_cache = LatentCache()
        model.unet.to(self.device)
        if config.is_lora:
            network_args = parse_network_args(config.network_args)
            spec = NetworkSpec(
                rank=config.network_dim,
                alpha=config.network_alpha,
                dropout=config.network_dropout,
                rank_dropout=network_args.get("rank_dropout", 0.0),
                module_dropout=network_args.get("module_dropout", 0.0),
                conv_rank=config.locon_dim,
                conv_alpha=config.locon_alpha,
                train_unet=not config.network_train_text_encoder_only,
                train_text_encoder=not config.network_train_unet_only,
            )
            weights = load_lora(config.network_weights)[0] if config.network_weights else None
            if weights is not None and config.dim_from_weights:
                spec = _spec_from_weights(spec, weights)
            unet_names = model.lora_unet_names()  # SDXL: kohya's SGM names
            self.network = LoRANetwork(model.unet, model.text_encoder, spec, model.text_encoder_2, unet_names)
            self.network.to(self.device).attach()
            self.network.set_multiplier(config.network_multiplier)
            if weights is not None:
                self.network.load_kohya_state_dict(_weights_for(spec, weights) if config.dim_from_weights else weights)
            groups = self.network.parameter_groups(
                unet_lr=config.unet_learning_rate, text_encoder_lr=config.text_encoder_learning_rate
            )
            text_encoder_params = list(self.network.text_encoder_loras.parameters())
        else:
            model.unet.requires_grad_(True)
            groups = [{"params": list(model.unet.parameters()), "lr": config.unet_learning_rate}]
            text_encoder_params = list(model.text_encoder.parameters()) if config.train_text_encoder else []
            if text_encoder_params:
                model.text_encoder.requires_grad_(True)
                groups.append({"params": text_encoder_params, "lr": config.text_encoder_learning_rate})
        groups = _without_frozen(groups)
        trained = {id(p) for g in groups for p in g["params"]}
        self.trains_text_encoder = any(id(p) in trained for p in text_encoder_params)
        if config.gradient_checkpointing:
            model.unet.enable_gradient_checkpointing()
            if self.trains_text_encoder:
                for encoder in model.text_encoders:
                    encoder.gradient_checkpointing_enable()
                    # Re-entrant checkpointing only back-propagates into a block whose input needs a gradient; with
                    # frozen embeddings (LoRA) nothing would, and the text encoder's LoRA would silently not train.
                    encoder.enable_input_require_grads()
        model.unet.train()
        for encoder in model.text_encoders:
            encoder.train(self.trains_text_encoder)
        self._store_weights_in_dtypes()
        self._compile_unet()
        # SDXL's size ids need each image's original size and crop: read once here, not at every step
        self.item_sizes = {item: data.original_size_and_crop(item) for item in set(self.items)} if self.sdxl else {}
        self._cache_latents()
        self._place_modules()
        self._check_text_encoder_caching()
        self._cache_text_encoder_outputs()
        self.params = [p for g in groups for p in g["params"]]
        built = make_optimizer(config.optimizer_type, groups, config.learning_rate, config.optimizer_args)
        self.optimizer_description = built.description  # kohya's ss_optimizer
        optimizer = built.optimizer
        # Through accelerate, so that under fp16 its GradScaler unscales the gradients before clipping and skips a
        # step whose gradients overflowed (instead of clipping gradients x65536 and stepping on inf).
        self.optimizer = self.accelerator.prepare_optimizer(optimizer)
        if config.full_fp16:
            _allow_fp16_gradients(self.accelerator)

        self.batches_per_epoch = len(self._epoch_batches(0))
        self.total_steps, self.num_epochs = step_plan(config, self.batches_per_epoch)
        self.save_every_n_epochs = epoch_save_interval(config, self.num_epochs)
        self.lr_scheduler = make_lr_scheduler(config, built, self.total_steps)
        self.position = Position()
        if config.resume:
            self._resume(config.resume)

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype frozen weights are stored in: mixed_precision's, as kohya's weight_dtype."""
        return WEIGHT_DTYPES.get(self.config.mixed_precision, torch.float32)

    @property
    def full_half(self) -> bool:
        """kohya's full_fp16 / full_bf16: the trained weights are stored in the mixed dtype too."""
        return self.config.full_fp16 or self.config.full_bf16

    def _store_weights_in_dtypes(self) -> None:
        """kohya's rule: under mixed precision the weights no optimizer updates are stored in the mixed dtype (half
        the memory and memory traffic; autocast would cast them at every forward anyway). Trained weights (LoRA
        modules, a fine-tuned UNet or text encoder) stay fp32 for the optimizer, unless full_fp16 / full_bf16.
        no_half_vae keeps the VAE fp32."""
        dtype, model = self.weight_dtype, self.model
        if dtype == torch.float32:
            return
        if self.network is not None:  # the LoRA modules are not the base modules' parameters
            model.unet.to(dtype=dtype)
            for encoder in model.text_encoders:
                encoder.to(dtype=dtype)
            if self.full_half:
                self.network.to(dtype=dtype)
        else:
            if self.full_half:
                model.unet.to(dtype=dtype)
            if self.full_half or not self.trains_text_encoder:
                for encoder in model.text_encoders:
                    encoder.to(dtype=dtype)
        # SDXL's VAE overflows in fp16 (kohya's no_half_vae): it stays fp32 then, as under no_half_vae
        sdxl_fp16 = self.sdxl and dtype == torch.float16
        if self.config.ignored.get("no_half_vae") is not True and not sdxl_fp16:
            model.vae.to(dtype=dtype)

    def vae_needed(self) -> bool:
        """Whether steps use the VAE: only when some item has no cached latents (kohya caches all or none)."""
        return not all(self._has_cached_latents(item) for item in self.items)

    def _has_cached_latents(self, item: data.TrainItem) -> bool:
        return item.latents_path is not None or self.latent_cache.covers(item)

    def _cache_latents(self) -> None:
        """Image-folder items: encode each image once now (latent_cache), unless the pixels change per step."""
        if will_cache(self.items, self.config):
            self.model.vae.to(self.device)
            self.latent_cache = build_latent_cache(self.items, self.model.vae, self.config, self.progress)

    def text_encoder_needed(self) -> bool:
        """Whether steps run the text encoder: not when its outputs are cached."""
        return self.text_cache is None

    def _place_modules(self) -> None:
        """Put the VAE and text encoder on the device only when steps use them; else on STORAGE_DEVICE, which
        frees their memory on a GPU (about 160 MB for SD1.5's VAE in fp16, 250 MB for its text encoder)."""
        needed = {"vae": self.vae_needed(), "text_encoder": self.text_encoder_needed()}
        if self.model.text_encoder_2 is not None:
            needed["text_encoder_2"] = self.text_encoder_needed()
        for name, is_needed in needed.items():
            getattr(self.model, name).to(self.device if is_needed else STORAGE_DEVICE)
            if is_needed:
                self.offloaded.discard(name)
            else:
                self.offloaded.add(name)

    def _bring_back_offloaded(self) -> None:
        for name in self.offloaded:
            getattr(self.model, name).to(self.device)

    def captions_fixed(self) -> bool:
        """Whether every item's caption is the same at every step (data.caption_varies: no shuffling, dropout,
        token warmup or wildcard choice, in the config or in any subset)."""
        return not any(data.caption_varies(item, self.config) for item in self.items)

    def _check_text_encoder_caching(self) -> None:
        """kohya's cache_text_encoder_outputs (and _to_disk) asked for: refused where kohya refuses it."""
        config = self.config
        if not (config.cache_text_encoder_outputs or config.cache_text_encoder_outputs_to_disk):
            return
        if self.trains_text_encoder:
            raise ConfigError(
                "cache_text_encoder_outputs needs frozen text encoders: set network_train_unet_only (as kohya asks), "
                "or leave cache_text_encoder_outputs out."
            )
        if not self.captions_fixed():
            raise ConfigError(
                "cache_text_encoder_outputs needs captions that stay the same at every step: turn off "
                "shuffle_caption, caption dropout, token warmup and wildcards, or leave cache_text_encoder_outputs out."
            )

    @torch.no_grad()
    def _cache_text_encoder_outputs(self) -> None:
        """With a frozen text encoder and fixed captions, each distinct caption is encoded once, here, instead of
        at every step; the states wait on STORAGE_DEVICE (a large caption set would not fit a GPU) and the text
        encoder leaves the device until samples."""
        if self.trains_text_encoder or not self.captions_fixed():
            return
        captions = sorted({data.fixed_caption(item, self.config) for item in self.items})
        cache: dict[str, Conditioning] = {}
        size = self.config.train_batch_size
        for start in range(0, len(captions), size):
            chunk = captions[start : start + size]
            encoded = self._encode_captions(chunk)
            cache.update({c: encoded.row(i).to(STORAGE_DEVICE) for i, c in enumerate(chunk)})
        self.text_cache = cache
        self._place_modules()

    def _encode_captions(self, captions: list[str]) -> Conditioning:
        model, length = self.model, self.config.max_token_length
        ids = text.tokenize(model.tokenizer, captions, length)
        with torch.set_grad_enabled(self.trains_text_encoder), self.accelerator.autocast():
            if model.text_encoder_2 is None:
                return Conditioning(text.encode(model.text_encoder, ids, self.config.clip_skip))
            assert model.tokenizer_2 is not None
            ids_2 = text.tokenize(model.tokenizer_2, captions, length)
            eos = model.tokenizer_2.eos_token_id
            return Conditioning(*text.encode_sdxl(model.text_encoder, model.text_encoder_2, ids, ids_2, eos))

    def _text_states(self, captions: list[str]) -> Conditioning:
        if self.text_cache is not None:
            return Conditioning.stack([self.text_cache[c] for c in captions]).to(self.device)
        return self._encode_captions(captions)

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """This process's share of the epoch (see shard_batches)."""
        batches = data.epoch_batches(self.items, self.config.train_batch_size, self.config.seed, epoch)
        return shard_batches(batches, self.accelerator.num_processes, self.accelerator.process_index)

    def _global_batch_index(self, local_index: int) -> int:
        """The batch's place in the whole epoch's list, which seeds its caption and flip draws: each process draws
        its own, and one process gives the same draws as before."""
        return local_index * self.accelerator.num_processes + self.accelerator.process_index

    def _check_processes_in_sync(self) -> None:
        """Data parallel training must end with the same weights everywhere; say so, or fail loudly."""
        if self.accelerator.num_processes == 1:
            return
        checksum = torch.stack([p.detach().double().sum() for p in self.params]).sum().reshape(1)
        sums = self.accelerator.gather(checksum)
        if not torch.allclose(sums, sums[0].expand_as(sums)):
            raise SDTrainError(f"Processes ended with different weights (checksums {sums.tolist()}).")
        self.progress.message(f"{self.accelerator.num_processes} processes, weights in sync")

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        if self.network is not None:
            return self.network.kohya_state_dict()
        state = {f"unet.{k}": v for k, v in self.model.unet.state_dict().items()}
        if self.config.train_text_encoder:
            state.update({f"text_encoder.{k}": v for k, v in self.model.text_encoder.state_dict().items()})
        return state

    def _resume(self, folder: str) -> None:
        state = load_state(folder)
        if state.note:
            self.progress.message(state.note)
        try:
            self._load_trainable(state.trainable)
            self.optimizer.load_state_dict(state.optimizer)
            self.lr_scheduler.load_state_dict(state.scheduler)
            restore_rng(state.rng, {"noise": self.noise_generator})
        except SDTrainError as e:
            raise SDTrainError(f"Cannot resume from {folder}: {e} Resume with the settings it was saved.") from None
        except (RuntimeError, ValueError, KeyError, TypeError) as e:  # a state of another run, model or optimizer
            raise SDTrainError(
                f"Cannot resume from {folder}: it does not fit this run ({type(e).__name__}: {str(e)[:300]}). "
                "Resume with the model, optimizer and settings it was saved with."
            ) from None
        if state.scaler is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state.scaler)
        self.position = state.position
        self.progress.message(f"Resumed from {folder} at step {state.position.step}.")

    def _load_trainable(self, trainable: dict[str, torch.Tensor]) -> None:
        if self.network is not None:
            self.network.load_kohya_state_dict(trainable)
            return
        self.model.unet.load_state_dict({k[5:]: v for k, v in trainable.items() if k.startswith("unet.")})
        te = {k[13:]: v for k, v in trainable.items() if k.startswith("text_encoder.")}
        if te:
            self.model.text_encoder.load_state_dict(te)

    # --- one step -----------------------------------------------------------------------------------------------

    def _cached_latents(self, item: data.TrainItem, flip: bool) -> torch.Tensor:
        if item.latents_path is not None:
            return data.load_cached_latents(item, flip)
        return self.latent_cache.get(item, flip)

    def _steps_before(self, epoch: int, local_index: int) -> int:
        """Optimizer steps done when this batch trains (kohya's current_step, which token warmup reads), known
        ahead since batches are prepared in a loader thread."""
        per_epoch = steps_per_epoch(self.config, self.batches_per_epoch)
        return epoch * per_epoch + local_index // self.config.gradient_accumulation_steps

    def _prepare_batch(self, batches: list[list[int]], epoch: int, local_index: int) -> PreparedBatch:
        """Everything a step needs from the data, on the CPU; runs in a loader thread (prefetch), so it draws only
        from its own generator, seeded by the batch's place in the epoch."""
        config = self.config
        batch = [self.items[i] for i in batches[local_index]]
        index = self._global_batch_index(local_index)
        caption_rng = torch.Generator().manual_seed(config.seed * 7919 + epoch * 100_003 + index)
        time = data.CaptionTime(epoch + 1, self._steps_before(epoch, local_index), self.total_steps)
        captions = [data.process_caption(item.caption, item.augment or config, caption_rng, time) for item in batch]
        flips = [(i.augment or config).flip_aug and bool(torch.rand((), generator=caption_rng) < 0.5) for i in batch]
        if all(self._has_cached_latents(item) for item in batch):
            latents = torch.stack([self._cached_latents(i, f) for i, f in zip(batch, flips, strict=True)])
            return PreparedBatch(batch, captions, _pinned(latents), None, self._time_ids(batch, flips))
        pixels = torch.stack([data.load_pixels(item, caption_rng) for item in batch])  # random_crop, color_aug
        pixels = torch.stack([torch.flip(p, dims=[2]) if f else p for p, f in zip(pixels, flips, strict=True)])
        return PreparedBatch(batch, captions, None, _pinned(pixels), self._time_ids(batch, flips))

    def _time_ids(self, batch: list[data.TrainItem], flips: list[bool]) -> torch.Tensor | None:
        if not self.sdxl:
            return None
        return torch.tensor(
            [data.size_conditioning(i, f, self.item_sizes[i]) for i, f in zip(batch, flips, strict=True)],
            dtype=torch.float32,
        )

    def _latents(self, prepared: PreparedBatch) -> torch.Tensor:
        if prepared.latents is not None:
            latents = prepared.latents.to(self.device, non_blocking=True)
        else:
            assert prepared.pixels is not None
            with torch.no_grad():
                pixels = prepared.pixels.to(self.device, self.model.vae.dtype, non_blocking=True)
                dist = self.model.vae.encode(pixels).latent_dist
                latents = dist.sample(generator=self.noise_generator).float()
        return latents * self.model.vae_scaling_factor

    def _loss(self, prepared: PreparedBatch) -> torch.Tensor:
        config, batch, captions = self.config, prepared.items, prepared.captions
        latents = self._latents(prepared)

        noise = self._noise(latents)
        cpu_timesteps = noise_and_loss.sample_timesteps(latents.shape[0], *self.timestep_range, self.noise_generator)
        timesteps = cpu_timesteps.to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, self._perturbed(noise), timesteps)

        conditioning = self._text_states(captions)
        with self.accelerator.autocast():
            prediction = self._predict(noisy, timesteps, conditioning, prepared.time_ids)

        v_target = self.model.v_prediction
        target = self.noise_scheduler.get_velocity(latents, noise, timesteps) if v_target else noise
        loss = noise_and_loss.elementwise_loss(prediction.float(), target.float(), config.loss_type,
                                               self._huber_c(timesteps)).mean(dim=[1, 2, 3])  # fmt: skip
        loss = loss * data.loss_weights(batch, config.prior_loss_weight).to(loss.device)  # reg images, as kohya
        loss = noise_and_loss.snr_weighted(
            loss, self.snr[cpu_timesteps], v_target, config.min_snr_gamma, config.scale_v_pred_loss_like_noise_pred,
            config.v_pred_like_loss, config.debiased_estimation_loss,
        )  # fmt: skip
        return loss.mean()

    def _noise(self, latents: torch.Tensor) -> torch.Tensor:
        """The noise the step adds: normal, with kohya's noise_offset (random / adaptive strength) and multires."""
        config, generator = self.config, self.noise_generator
        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        if config.noise_offset:
            offset = noise_and_loss.random_strength(config.noise_offset, config.noise_offset_random_strength, generator)
            noise = noise_and_loss.apply_noise_offset(latents, noise, offset, config.adaptive_noise_scale, generator)
        if config.multires_noise_iterations:
            iterations, discount = config.multires_noise_iterations, config.multires_noise_discount
            noise = noise_and_loss.pyramid_noise(noise, iterations, discount, generator)
        return noise

    def _perturbed(self, noise: torch.Tensor) -> torch.Tensor:
        """kohya's ip_noise_gamma: the noise that goes into the noised latents (the target keeps `noise`)."""
        config = self.config
        if not config.ip_noise_gamma:
            return noise
        gamma = noise_and_loss.random_strength(
            config.ip_noise_gamma, config.ip_noise_gamma_random_strength, self.noise_generator
        )
        return noise_and_loss.perturbed_noise(noise, gamma, self.noise_generator)

    def _huber_c(self, timesteps: torch.Tensor) -> torch.Tensor | None:
        config = self.config
        if config.loss_type not in ("huber", "smooth_l1"):
            return None
        return noise_and_loss.huber_c(
            config.huber_schedule, config.huber_c, config.huber_scale, timesteps,
            self.noise_scheduler.alphas_cumprod, self.noise_scheduler.config.num_train_timesteps,
        )  # fmt: skip

    def _predict(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning, time_ids: torch.Tensor | None
    ) -> torch.Tensor:
        """The UNet's prediction, through torch.compile when dynamo_backend asks for it. Compilation happens at the
        first call (and again for a new bucket size); if it fails there, say so and go on uncompiled. SDXL's UNet
        also takes the pooled text and the size ids, which it embeds as kohya's get_size_embeddings does."""
        kwargs: dict[str, Any] = {"encoder_hidden_states": conditioning.states}
        if conditioning.pooled is not None and time_ids is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": conditioning.pooled, "time_ids": time_ids.to(noisy.device)}
        try:
            return self.unet_forward(noisy, timesteps, **kwargs).sample
        except Exception as e:
            if self.unet_forward is self.model.unet or self.compiled_once or _is_out_of_memory(e):
                raise
            self.progress.message(
                f"torch.compile with dynamo_backend {self.config.dynamo_backend} failed ({type(e).__name__}: "
                f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}); training without compilation."
            )
            self.unet_forward = self.model.unet
            return self.model.unet(noisy, timesteps, **kwargs).sample
        finally:
            self.compiled_once = True

    def _compile_unet(self) -> None:
        """kohya's dynamo_backend: the training forward goes through torch.compile; the module itself (saves,
        samples, the WebUI's model) stays as it is."""
        self.unet_forward = self.model.unet
        self.compiled_once = False
        backend = self.config.dynamo_backend.lower()
        if backend != "no":
            self.unet_forward = torch.compile(self.model.unet, backend=backend)

    def _optimizer_step(self) -> None:
        if self.accelerator.num_processes > 1:  # data parallel: average gradients over processes
            for p in self.params:
                if p.grad is not None:
                    p.grad = self.accelerator.reduce(p.grad, reduction="mean")
        if self.config.max_grad_norm:  # unscales fp16 gradients first
            self.accelerator.clip_grad_norm_(self.params, self.config.max_grad_norm)
        scaler = self.accelerator.scaler
        scale = scaler.get_scale() if scaler is not None else 0.0
        self.optimizer.step()
        # Under fp16 the GradScaler skips a step whose gradients overflowed, and lowers its scale; the schedule then
        # waits too, as kohya's. (accelerate 0.21's step_was_skipped misses an overflow at the first step.)
        self.last_step_skipped = scaler is not None and scaler.get_scale() < scale
        if not self.last_step_skipped:
            self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    # --- saving ---------------------------------------------------------------------------------------------------

    def save_model(self, suffix: str = "") -> Path:
        config = self.config
        name = f"{config.output_name}{suffix}{save_extension(config)}"
        if not self.accelerator.is_main_process:  # one writer; the weights are the same everywhere
            return self.output_dir / name
        if self.network is not None:
            metadata = lora_metadata(self, finished=not suffix and not self.stop_note)
            state = self.network.kohya_state_dict()
            path = self.guard.write(name, lambda p: write_lora(p, state, metadata, config))
        else:
            owner = {OWNER_KEY: config.output_name}
            path = self.guard.write(name, lambda p: write_checkpoint(p, self.model, config, self.position, owner))
        self.last_good_save = path
        self.saves.append(path)
        self.progress.message(f"Saved {path}")
        return path

    def save_training_state(self, suffix: str) -> Path:
        name = f"{self.config.output_name}{suffix}-state"
        if not self.accelerator.is_main_process:
            return self.output_dir / name
        trainable = self._trainable_state()
        generators = {"noise": self.noise_generator}
        scaler = self.accelerator.scaler
        scaler_state = scaler.state_dict() if scaler is not None else None
        return self.guard.write(
            name,
            lambda p: save_state(
                p, trainable, self.optimizer, self.lr_scheduler, self.position, generators, scaler_state
            ),
        )

    def check_room(self) -> None:
        """Before the first step: an OutputError unless the output folder has room for one save (the model file,
        and the state when save_state is on)."""
        if self.accelerator.is_main_process:
            what = "one save" + (" with its state" if self.config.save_state else "")
            check_room(self.output_dir, self.save_size(), what)

    def save_size(self) -> int:
        """A rough upper bound of one save's bytes: the saved tensors in save_precision plus a header allowance
        (the metadata, ~200 bytes per tensor name); a state adds the trainable tensors in fp32 three times (the
        weights and AdamW's two moments)."""
        element = torch.tensor([], dtype=SAVE_DTYPES[self.config.save_precision]).element_size()
        if self.network is not None:
            tensors = self.network.kohya_state_dict()
            header = len(json.dumps(lora_metadata(self, finished=True))) + 200 * len(tensors)
        else:
            modules = (self.model.unet, self.model.vae, *self.model.text_encoders)
            tensors = {f"{i}{k}": v for i, m in enumerate(modules) for k, v in m.state_dict().items()}
            tensors.update(self.model.extra_ldm_state or {})
            header = 200 * len(tensors)
        size = sum(t.numel() for t in tensors.values()) * element + header
        if self.config.save_state:
            size += 3 * 4 * sum(p.numel() for p in self.params) + 64 * 1024
        return size

    def _sample(self, label: str) -> None:
        if not self.prompts:
            return
        was_training = self.model.unet.training
        self.model.unet.eval()
        if self.network is not None:  # samples show the LoRA itself: none of its dropouts
            self.network.eval()
        self._bring_back_offloaded()
        try:
            results = generate_samples(
                self.model, self.prompts, self.output_dir / "sample", self.config.output_name,
                label, self.position.step, self.config.clip_skip, self.config.sample_sampler,
            )  # fmt: skip
        except Exception as e:  # samples are a preview: a full disk must not cost the run
            if not is_write_error(e):
                raise
            self.progress.message(f"Could not write the samples in {self.output_dir / 'sample'} ({e}); skipped.")
            results = []
        finally:
            self.model.unet.train(was_training)
            if self.network is not None:
                self.network.train(was_training)
            self._place_modules()
        for path, image in results:
            self.samples.append(path)
            self.progress.image(image, caption=path.name, path=path)

    # --- the start-of-training summary ---------------------------------------------------------------------------

    def summary(self) -> str:
        """What this run will do, in the terms of kohya's start-up log, before the first step."""
        config = self.config
        lines = [
            f"Training {self._what()} on {self.device} (mixed precision {config.mixed_precision})",
            self._data_line(),
            f"{self.batches_per_epoch} batches per epoch (batch size {config.train_batch_size}, gradient "
            f"accumulation {config.gradient_accumulation_steps}), {_plural(self.num_epochs, 'epoch')}, "
            f"{_plural(self.total_steps, 'step')}"
            + (f", resuming at step {self.position.step}" if self.position.step else ""),
            f"{sum(p.numel() for p in self.params):,} trainable parameters; {self._rates()}",
            self._memory_line(),
            f"Output: {self.output_dir / (config.output_name + save_extension(config))} ({config.save_precision})",
        ]
        lines += [
            f"SD-Train default differs from kohya: {key} {_shown(getattr(config, key))} (kohya's default: {kohya})"
            for key, kohya in DIFFERING_DEFAULTS.items()
            if key not in config.given and getattr(config, key) == _default(key) and self._default_matters(key)
        ]
        return "\n".join(lines)

    def _default_matters(self, key: str) -> bool:
        """Whether a default that differs from kohya's changes this run: the bucket and latent-cache defaults act on
        image folders only (metadata datasets come bucketed and cached from Prepare)."""
        return key not in ("cache_latents", "enable_bucket") or bool(folder_items(self.items))

    def _what(self) -> str:
        if self.network is None:
            return "a full fine-tune (UNet" + (" + text encoder)" if self.trains_text_encoder else ")")
        spec = self.network.spec
        text = f"a LoRA (dim {spec.rank}, alpha {_shown(spec.alpha or spec.rank)}"
        if spec.conv_rank:
            text += f", LoCon conv dim {spec.conv_rank}, conv alpha {_shown(spec.conv_alpha or spec.conv_rank)}"
        loras = (("UNet", self.network.unet_loras), ("text encoder", self.network.text_encoder_loras))
        parts = [name for name, modules in loras if any(p.requires_grad for p in modules.parameters())]
        return text + f"; trains the {' and '.join(parts)})"

    def _memory_line(self) -> str:
        """Where the frozen weights are kept and what is computed once rather than at every step."""
        dtype = str(self.weight_dtype).removeprefix("torch.")
        mixed = self.weight_dtype != torch.float32
        trained = dtype if self.full_half else "fp32"
        parts = [f"frozen weights stored in {dtype}, trained weights in {trained}" if mixed else "all weights in fp32"]
        if "vae" in self.offloaded:
            parts.append(f"VAE kept on {STORAGE_DEVICE} (latents cached; it comes back for samples)")
        if self.text_cache is not None:
            parts.append(
                f"text encoder outputs cached ({_plural(len(self.text_cache), 'distinct caption')} encoded once; "
                f"the text encoder kept on {STORAGE_DEVICE})"
            )
        elif not self.trains_text_encoder:
            parts.append("text encoder outputs not cached: captions change per step (shuffle_caption or dropout)")
        return "; ".join(parts)

    def _data_line(self) -> str:
        line = describe_items(self.items, self.config)
        if self.latent_cache.latents:
            line += f" ({self.latent_cache.describe()})"
        return line

    def _rates(self) -> str:
        config = self.config
        unet = config.unet_learning_rate
        rates = f"learning rate {_shown(unet)} (UNet)" if unet else "UNet frozen (unet_lr 0)"
        if self.network is not None or config.train_text_encoder:
            te = config.text_encoder_learning_rate
            rates += f", {_shown(te)} (text encoder)" if te else ", text encoder frozen (text_encoder_lr 0)"
        return rates + f", {config.optimizer_type}, {config.lr_scheduler} schedule"

    # --- the loop -------------------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        self.setup()
        config, progress = self.config, self.progress
        self.check_room()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        unused = sorted(UNUSED_WHEN_GIVEN & set(config.ignored))
        if unused:
            progress.message(f"Accepted but not used by SD-Train: {', '.join(unused)}")
        progress.message(self.summary())
        log = TensorBoardLog(config.logging_dir, config.log_prefix or config.output_name, progress)
        progress.start(self.total_steps, "training")
        if self.position.step:  # a resumed run: the bar starts where the state left off and ends at the total
            progress.state.done = self.position.step
            progress.on_advance(self.position.step, {})
        if config.sample_at_first:  # kohya's sample_at_first: the model before this run's first step
            self._sample(f"e{self.position.epoch:06d}")
        self.losses: list[float] = []
        state_dir = None
        try:
            for epoch in range(self.position.epoch, self.num_epochs):
                batches = self._epoch_batches(epoch)
                first = self.position.batch if epoch == self.position.epoch else 0
                with prefetched(
                    lambda i: self._prepare_batch(batches, epoch, i),  # noqa: B023
                    range(first, len(batches)),
                    worker_count(config.max_data_loader_n_workers),
                ) as prepared_batches:
                    epoch_losses = self._train_epoch(epoch, first, len(batches), prepared_batches, log)
                if self.position.batch >= len(batches):  # a run that reached its steps mid-epoch resumes there
                    self.position.epoch, self.position.batch = epoch + 1, 0
                if epoch_losses:
                    log.epoch(epoch + 1, sum(epoch_losses) / len(epoch_losses))
                self._after_epoch(epoch)
                if self.position.step >= self.total_steps:
                    break
            self._check_processes_in_sync()
            output = self.save_model()
            if config.save_state:
                state_dir = self.save_training_state("")
            self._sample(f"e{self.position.epochs_reached:06d}")
        except Cancelled:
            self.stop_note = f"cancelled at step {self.position.step} of {self.total_steps}"
            output = self.save_model()
            state_dir = self.save_training_state("")
            rescued = f" {self.guard.outcome()}" if self.guard.rescued else ""
            raise Cancelled(
                f"Cancelled at step {self.position.step}. Saved {output} and the state {state_dir} "
                f"(continue with resume = that folder).{rescued}"
            ) from None
        finally:
            log.close()
            progress.finish()
            if self.network is not None:
                self.network.detach()
        if output in self.guard.rescued or state_dir in self.guard.rescued:  # not where the user looks: say where
            raise OutputError(f"Training finished. {self.guard.outcome()}")
        if self.guard.rescued:
            progress.message(self.guard.outcome())
        return TrainResult(output, self.position.step, self.losses, state_dir, self.samples)

    def _train_epoch(
        self, epoch: int, first: int, count: int, prepared_batches: Iterator[PreparedBatch], log: TensorBoardLog
    ) -> list[float]:
        """Batches first..count-1 of one epoch: forward and backward each, an optimizer step every
        gradient_accumulation_steps batches and at the epoch's end; the losses of the steps taken."""
        config, progress = self.config, self.progress
        epoch_losses: list[float] = []
        accumulated = 0
        for batch_index, prepared in zip(range(first, count), prepared_batches, strict=True):
            loss = self._guarded(lambda: self._loss(prepared))  # noqa: B023
            self._guarded(lambda: self.accelerator.backward(loss / config.gradient_accumulation_steps))  # noqa: B023
            # The one read of the loss (a device sync) per batch, after backward so the queued work is not waited
            # for twice; it serves the NaN check, the progress and the log. A NaN reaches only the gradients here:
            # the check below comes before any optimizer step.
            loss_value = loss.detach().item()
            self._check_finite(loss_value)
            accumulated += 1
            self.position.batch = batch_index + 1
            if accumulated < config.gradient_accumulation_steps and batch_index + 1 < count:
                continue
            accumulated = 0
            self._optimizer_step()
            norms = self._apply_max_norm()
            self.position.step += 1
            self.losses.append(loss_value)
            epoch_losses.append(loss_value)
            average = sum(epoch_losses) / len(epoch_losses)
            lrs = [float(lr) for lr in self.lr_scheduler.get_last_lr()]
            log.step(self.position.step, loss_value, average, lrs, self.trains_text_encoder)
            shown = {}
            if norms is not None:  # kohya's max_norm/* log entries and "Keys Scaled", "Average key norm" postfix
                log.scalars(self.position.step, {f"max_norm/{k}": v for k, v in zip(MAX_NORM_LOGS, norms, strict=True)})
                shown = {"Keys Scaled": norms[0], "Average key norm": norms[1]}
            progress.advance(1, loss=loss_value, average=average, lr=lrs[-1], epoch=epoch + 1, **shown)
            self._after_step()
            if self.position.step >= self.total_steps:
                break
            progress.check_cancelled()
        return epoch_losses

    def _apply_max_norm(self) -> tuple[int, float, float] | None:
        """kohya's scale_weight_norms after each optimizer step: (keys scaled, mean norm, max norm), or None."""
        if self.network is None or not self.config.scale_weight_norms:
            return None
        return self.network.apply_max_norm(self.config.scale_weight_norms)

    def _check_finite(self, loss: float) -> None:
        if not math.isfinite(loss):
            kept = f" The last good save is kept: {self.last_good_save}." if self.last_good_save else ""
            raise TrainingDiverged(
                f"The loss became {loss} at step {self.position.step + 1}; training stopped.{kept} "
                "Lower learning_rate, use mixed_precision bf16 or no, or check the data."
            )

    def _guarded(self, fn):
        try:
            return fn()
        except RuntimeError as e:
            if _is_out_of_memory(e):
                raise SDTrainError(OOM_ADVICE) from e
            raise

    def _after_step(self) -> None:
        config, step = self.config, self.position.step
        if config.save_every_n_steps and step % config.save_every_n_steps == 0 and step < self.total_steps:
            self.save_model(f"-step{step:08d}")
            if config.save_state:
                self.save_training_state(f"-step{step:08d}")
            self._remove_old_saves(step_to_remove, step, config.save_every_n_steps, "-step{:08d}", "steps")
        # kohya: sample_every_n_epochs, when set, replaces sample_every_n_steps
        every = None if config.sample_every_n_epochs else config.sample_every_n_steps
        if every and step % every == 0 and step < self.total_steps:
            self._sample(f"{step:06d}")

    def _remove_old_saves(self, which, done: int, every: int, suffix: str, unit: str) -> None:
        """kohya's save_last_n_epochs / save_last_n_steps (and their _state forms, which default to them): delete
        the save, and the state, that fell out of the last n. `which` is outputs.epoch_to_remove or step_to_remove."""
        config = self.config
        keep = getattr(config, f"save_last_n_{unit}")
        if not self.accelerator.is_main_process:
            return
        old = which(done, every, keep)
        if old is not None:
            remove_old_save(self.output_dir / f"{config.output_name}{suffix.format(old)}{save_extension(config)}",
                            self.progress.message)  # fmt: skip
        old = which(done, every, getattr(config, f"save_last_n_{unit}_state") or keep)
        if old is not None and config.save_state:
            remove_old_save(self.output_dir / f"{config.output_name}{suffix.format(old)}-state", self.progress.message)

    def _after_epoch(self, epoch: int) -> None:
        config, number, every = self.config, epoch + 1, self.save_every_n_epochs
        if every and number % every == 0 and number < self.num_epochs:
            self.save_model(f"-{number:06d}")
            if config.save_state:
                self.save_training_state(f"-{number:06d}")
            self._remove_old_saves(epoch_to_remove, number, every, "-{:06d}", "epochs")
        if config.sample_every_n_epochs and number % config.sample_every_n_epochs == 0 and number < self.num_epochs:
            self._sample(f"e{number:06d}")


def shard_batches(batches: list[list[int]], world: int, rank: int) -> list[list[int]]:
    """One process's share of an epoch's batches in data-parallel training: every world-th batch. As accelerate's
    prepared DataLoader does for kohya (even_batches), the last round is completed with the epoch's first batches,
    so every batch is trained and every process takes the same number of steps (ceil(batches / world))."""
    if world == 1:
        return batches
    rounds = math.ceil(len(batches) / world)
    padded = [batches[i % len(batches)] for i in range(rounds * world)]
    return padded[rank::world]


def steps_per_epoch(config: TrainConfig, batches_per_epoch: int) -> int:
    """Optimizer steps in an epoch: one per gradient_accumulation_steps batches, and one for the epoch's rest."""
    return math.ceil(batches_per_epoch / config.gradient_accumulation_steps)


def step_plan(config: TrainConfig, batches_per_epoch: int) -> tuple[int, int]:
    """(total optimizer steps, epochs) as kohya counts them: max_train_epochs wins over max_train_steps."""
    per_epoch = steps_per_epoch(config, batches_per_epoch)
    total = config.max_train_epochs * per_epoch if config.max_train_epochs else config.max_train_steps
    return total, math.ceil(total / per_epoch)


def describe_items(items: list[data.TrainItem], config: TrainConfig) -> str:
    """Images, repeats, buckets and where latents come from, in one line."""
    counts = Counter(item.key for item in items)
    repeats = sorted(set(counts.values()))
    shown = str(repeats[0]) if len(repeats) == 1 else f"{repeats[0]}-{repeats[-1]}"
    buckets = len({item.bucket for item in items})
    source = latent_source(items, config)
    return (
        f"{_plural(len(counts), 'image')}, repeats {shown} ({len(items)} per epoch), "
        f"{_plural(buckets, 'bucket')}, {source}"
    )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _default(key: str):
    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == key)


def _without_frozen(groups: list[dict]) -> list[dict]:
    """kohya's rule: a part whose learning rate is 0 is not trained at all (its group is dropped, its weights get no
    gradient), rather than falling back to learning_rate."""
    kept = []
    for group in groups:
        if group["lr"] == 0:
            for p in group["params"]:
                p.requires_grad_(False)
        else:
            kept.append(group)
    if not kept:
        raise ConfigError("nothing to train: every part's learning rate is 0 (unet_lr, text_encoder_lr).")
    return kept


def train(
    config: TrainConfig, model: SDModel | None = None, progress: Progress | None = None, run: str = "a training run"
) -> TrainResult:
    """Train while holding the output (train/output_lock.py): `run` tells a second run naming it who has it."""
    with hold_output(config.output_dir, config.output_name, run):
        return Trainer(config, model, progress).run()


def _spec_from_weights(spec: NetworkSpec, weights: dict[str, torch.Tensor]) -> NetworkSpec:
    """kohya's dim_from_weights: every module's rank and alpha from the LoRA file; the spec's rank / alpha (and
    conv_rank / conv_alpha for 3x3 convolutions) become the file's most common ones, for the summary and ss_*."""
    ranks = ranks_from_weights(weights)
    conv = {k.split(".")[0] for k, v in weights.items() if k.endswith(".lora_down.weight") and v.shape[2:] == (3, 3)}
    linear = Counter(v for k, v in ranks.items() if k not in conv).most_common(1)
    convs = Counter(v for k, v in ranks.items() if k in conv).most_common(1)
    if not linear:
        raise ConfigError("dim_from_weights: network_weights has no LoRA modules for linear layers.")
    (rank, alpha), _ = linear[0]
    conv_rank, conv_alpha = convs[0][0] if convs else (None, None)
    return dataclasses.replace(
        spec, rank=rank, alpha=alpha, conv_rank=conv_rank, conv_alpha=conv_alpha, module_ranks=ranks
    )


def _weights_for(spec: NetworkSpec, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The file's tensors of the parts this run trains (network_train_unet_only leaves out the text encoder's, and
    network_train_text_encoder_only the UNet's), as kohya drops those modules from a network read from weights."""
    prefixes = tuple(p for p, kept in (("lora_unet", spec.train_unet), ("lora_te", spec.train_text_encoder)) if kept)
    return {k: v for k, v in weights.items() if k.startswith(prefixes)}


def _with_vae(model: SDModel, vae: str | None) -> SDModel:
    """kohya's vae: the model with its VAE replaced by the one at `vae` (a VAE or checkpoint file, a diffusers
    folder), for encoding and samples. A copy of the SDModel, so a model the WebUI handed over keeps its own VAE."""
    if not vae:
        return model
    from lib_sdtrain.models.loading import load_vae

    return dataclasses.replace(model, vae=load_vae(vae))


def _check_sdxl_run(config: TrainConfig, model: SDModel) -> None:
    """What SDXL training does not take yet, or takes differently from SD 1.x/2.x, refused before anything loads."""
    name = model.source_name or model.source or "The base model"
    if not config.is_lora and config.train_text_encoder:
        raise UnsupportedModelError(
            f"{name} is an SDXL model: a full fine-tune trains its UNet; training its two text encoders too (kohya's "
            "learning_rate_te1/te2) is not supported yet. Leave train_text_encoder off."
        )
    if config.enable_bucket and config.bucket_reso_steps % 32:
        raise ConfigError(
            f"bucket_reso_steps = {config.bucket_reso_steps}: SDXL's buckets are multiples of 32 pixels (kohya checks "
            "the same); choose 32 or 64."
        )
    if config.clip_skip > 1:
        raise ConfigError(
            f"clip_skip = {config.clip_skip} is for SD 1.x/2.x: SDXL conditions on the penultimate layer of both its "
            "text encoders, as kohya's sdxl_train_network.py does; remove clip_skip."
        )


def _load_model(config: TrainConfig) -> SDModel:
    from lib_sdtrain.models.loading import load_sd_model

    prediction: PredictionType | None = "v_prediction" if config.v_parameterization else None
    return load_sd_model(config.pretrained_model_name_or_path, tokenizer=config.tokenizer, prediction_type=prediction)


def _make_accelerator(config: TrainConfig):
    """An Accelerator for this run. accelerate keeps one configuration per process; a long-lived WebUI process
    trains many times with different settings, so the previous run's state is reset first."""
    from accelerate import Accelerator

    _reset_accelerate_state()
    mixed = config.mixed_precision
    if torch.cuda.is_available():
        _set_tf32(config.allow_tf32)
    if mixed == "fp16" and not torch.cuda.is_available():
        raise ConfigError("mixed_precision fp16 needs a GPU; use bf16 or no on this machine.")
    return Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def check_dynamo_backend(name: str) -> None:
    """dynamo_backend as kohya takes it (accelerate's names, any case): no, or a backend this torch has."""
    backend = name.lower()
    if backend == "no":
        return
    import torch._dynamo

    available = sorted(torch._dynamo.list_backends(exclude_tags=()))
    if backend not in available:
        raise ConfigError(f"dynamo_backend {name!r} is not available in this torch; use no or one of {available}.")


def _reset_accelerate_state() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def _allow_fp16_gradients(accelerator) -> None:
    """full_fp16 trains fp16 weights, whose gradients are fp16; torch's GradScaler refuses to unscale those, so let
    it (kohya's patch_accelerator_for_fp16_training does the same)."""
    scaler = accelerator.scaler
    if scaler is None:
        return
    unscale = scaler._unscale_grads_
    scaler._unscale_grads_ = lambda optimizer, inv_scale, found_inf, _allow_fp16: unscale(
        optimizer, inv_scale, found_inf, True
    )


def _set_tf32(allowed: bool) -> None:
    """TF32 matmuls and convolutions on Ampere and newer GPUs (fp32 range, 10-bit mantissa, several times faster
    for fp32 work), as the WebUI and diffusers' examples (--allow_tf32) use; no effect on older GPUs or the CPU."""
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed
