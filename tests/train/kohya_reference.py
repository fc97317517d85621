"""kohya sd-scripts' own code, transcribed once as the reference the train tests compare SD-Train with.

Each function is written out from kohya-ss/sd-scripts at the tag named above it (v0.10.0 is commit 966e9d7f, of
2026-01-19), statement for statement: kohya's names and order of operations; logging and commented-out lines left
out, Japanese comments put in English, a method's `self` made a parameter. It is not SD-Train's code and
lib_sdtrain never imports it. kohya draws from the global generators
(torch's, and Python's `random` for the multires noise); a test seeds them (inside torch.random.fork_rng) to replay
the draws SD-Train makes from its own generator. sd-scripts is Apache-2.0 licensed (LICENSE.md there).
"""

from __future__ import annotations

import math
import random

import torch

# --- library/train_util.py ---------------------------------------------------------------------------------------


# kohya sd-scripts v0.10.0, library/train_util.py, get_huber_threshold_if_needed (v0.8.7 to v0.9.1 had the same
# schedules, without huber_scale, in get_timesteps_and_huber_c; v0.8.7 with one timestep per batch).
def get_huber_threshold_if_needed(args, timesteps: torch.Tensor, noise_scheduler) -> torch.Tensor | None:
    if not (args.loss_type == "huber" or args.loss_type == "smooth_l1"):
        return None

    b_size = timesteps.shape[0]
    if args.huber_schedule == "exponential":
        alpha = -math.log(args.huber_c) / noise_scheduler.config.num_train_timesteps
        result = torch.exp(-alpha * timesteps) * args.huber_scale
    elif args.huber_schedule == "snr":
        if not hasattr(noise_scheduler, "alphas_cumprod"):
            raise NotImplementedError("Huber schedule 'snr' is not supported with the current model.")
        alphas_cumprod = torch.index_select(noise_scheduler.alphas_cumprod, 0, timesteps.cpu())
        sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5
        result = (1 - args.huber_c) / (1 + sigmas) ** 2 + args.huber_c
        result = result.to(timesteps.device)
    elif args.huber_schedule == "constant":
        result = torch.full((b_size,), args.huber_c * args.huber_scale, device=timesteps.device)
    else:
        raise NotImplementedError(f"Unknown Huber loss schedule {args.huber_schedule}!")

    return result


# kohya sd-scripts v0.10.0, library/train_util.py, conditional_loss.
def conditional_loss(
    model_pred: torch.Tensor, target: torch.Tensor, loss_type: str, reduction: str, huber_c: torch.Tensor | None = None
):
    if loss_type == "l2":
        loss = torch.nn.functional.mse_loss(model_pred, target, reduction=reduction)
    elif loss_type == "l1":
        loss = torch.nn.functional.l1_loss(model_pred, target, reduction=reduction)
    elif loss_type == "huber":
        if huber_c is None:
            raise NotImplementedError("huber_c not implemented correctly")
        huber_c = huber_c.view(-1, 1, 1, 1)
        loss = 2 * huber_c * (torch.sqrt((model_pred - target) ** 2 + huber_c**2) - huber_c)
        if reduction == "mean":
            loss = torch.mean(loss)
        elif reduction == "sum":
            loss = torch.sum(loss)
    elif loss_type == "smooth_l1":
        if huber_c is None:
            raise NotImplementedError("huber_c not implemented correctly")
        huber_c = huber_c.view(-1, 1, 1, 1)
        loss = 2 * (torch.sqrt((model_pred - target) ** 2 + huber_c**2) - huber_c)
        if reduction == "mean":
            loss = torch.mean(loss)
        elif reduction == "sum":
            loss = torch.sum(loss)
    else:
        raise NotImplementedError(f"Unsupported Loss Type: {loss_type}")
    return loss


# kohya sd-scripts v0.10.0, library/train_util.py, get_noise_noisy_latents_and_timesteps: its noise_offset lines
# (the draw of a random strength, then apply_noise_offset), given the noise it drew before them.
def noise_with_offset(args, latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    if args.noise_offset:
        if args.noise_offset_random_strength:
            noise_offset = torch.rand(1, device=latents.device) * args.noise_offset
        else:
            noise_offset = args.noise_offset
        noise = apply_noise_offset(latents, noise, noise_offset, args.adaptive_noise_scale)
    return noise


# kohya sd-scripts v0.10.0, library/train_util.py, BaseDataset.get_input_ids (`self.tokenizer_max_length` made a
# parameter: kohya's max_token_length + 2).
def get_input_ids(caption, tokenizer, tokenizer_max_length: int) -> torch.Tensor:
    input_ids = tokenizer(
        caption, padding="max_length", truncation=True, max_length=tokenizer_max_length, return_tensors="pt"
    ).input_ids

    if tokenizer_max_length > tokenizer.model_max_length:
        input_ids = input_ids.squeeze(0)
        iids_list = []
        if tokenizer.pad_token_id == tokenizer.eos_token_id:
            # v1
            for i in range(1, tokenizer_max_length - tokenizer.model_max_length + 2, tokenizer.model_max_length - 2):
                ids_chunk = (
                    input_ids[0].unsqueeze(0),
                    input_ids[i : i + tokenizer.model_max_length - 2],
                    input_ids[-1].unsqueeze(0),
                )
                ids_chunk = torch.cat(ids_chunk)
                iids_list.append(ids_chunk)
        else:
            # v2 or SDXL
            for i in range(1, tokenizer_max_length - tokenizer.model_max_length + 2, tokenizer.model_max_length - 2):
                ids_chunk = (
                    input_ids[0].unsqueeze(0),  # BOS
                    input_ids[i : i + tokenizer.model_max_length - 2],
                    input_ids[-1].unsqueeze(0),
                )  # PAD or EOS
                ids_chunk = torch.cat(ids_chunk)

                # ending <EOS> <PAD> or <PAD> <PAD>: nothing to do; ending x <PAD/EOS>: the last becomes <EOS>
                if ids_chunk[-2] != tokenizer.eos_token_id and ids_chunk[-2] != tokenizer.pad_token_id:
                    ids_chunk[-1] = tokenizer.eos_token_id
                # starting <BOS> <PAD> ...: becomes <BOS> <EOS> <PAD> ...
                if ids_chunk[1] == tokenizer.pad_token_id:
                    ids_chunk[1] = tokenizer.eos_token_id

                iids_list.append(ids_chunk)

        input_ids = torch.stack(iids_list)  # 3,77
    return input_ids


# --- library/custom_train_functions.py ----------------------------------------------------------------------------


# kohya sd-scripts v0.10.0, library/custom_train_functions.py, fix_noise_scheduler_betas_for_zero_terminal_snr
# (with its inner enforce_zero_terminal_snr).
def fix_noise_scheduler_betas_for_zero_terminal_snr(noise_scheduler):
    def enforce_zero_terminal_snr(betas):
        # Convert betas to alphas_bar_sqrt
        alphas = 1 - betas
        alphas_bar = alphas.cumprod(0)
        alphas_bar_sqrt = alphas_bar.sqrt()

        # Store old values.
        alphas_bar_sqrt_0 = alphas_bar_sqrt[0].clone()
        alphas_bar_sqrt_T = alphas_bar_sqrt[-1].clone()
        # Shift so last timestep is zero.
        alphas_bar_sqrt -= alphas_bar_sqrt_T
        # Scale so first timestep is back to old value.
        alphas_bar_sqrt *= alphas_bar_sqrt_0 / (alphas_bar_sqrt_0 - alphas_bar_sqrt_T)

        # Convert alphas_bar_sqrt to betas
        alphas_bar = alphas_bar_sqrt**2
        alphas = alphas_bar[1:] / alphas_bar[:-1]
        alphas = torch.cat([alphas_bar[0:1], alphas])
        betas = 1 - alphas
        return betas

    betas = noise_scheduler.betas
    betas = enforce_zero_terminal_snr(betas)
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)

    noise_scheduler.betas = betas
    noise_scheduler.alphas = alphas
    noise_scheduler.alphas_cumprod = alphas_cumprod


# kohya sd-scripts v0.10.0, library/custom_train_functions.py, apply_snr_weight.
def apply_snr_weight(loss, timesteps, noise_scheduler, gamma, v_prediction=False):
    snr = torch.stack([noise_scheduler.all_snr[t] for t in timesteps])
    min_snr_gamma = torch.minimum(snr, torch.full_like(snr, gamma))
    if v_prediction:
        snr_weight = torch.div(min_snr_gamma, snr + 1).float().to(loss.device)
    else:
        snr_weight = torch.div(min_snr_gamma, snr).float().to(loss.device)
    loss = loss * snr_weight
    return loss


# kohya sd-scripts v0.10.0, library/custom_train_functions.py, scale_v_prediction_loss_like_noise_prediction.
def scale_v_prediction_loss_like_noise_prediction(loss, timesteps, noise_scheduler):
    scale = get_snr_scale(timesteps, noise_scheduler)
    loss = loss * scale
    return loss


# kohya sd-scripts v0.10.0, library/custom_train_functions.py, get_snr_scale.
def get_snr_scale(timesteps, noise_scheduler):
    snr_t = torch.stack([noise_scheduler.all_snr[t] for t in timesteps])  # batch_size
    snr_t = torch.minimum(snr_t, torch.ones_like(snr_t) * 1000)  # if timestep is 0, snr_t is inf, so limit it to 1000
    scale = snr_t / (snr_t + 1)
    return scale


# kohya sd-scripts v0.10.0, library/custom_train_functions.py, add_v_prediction_like_loss.
def add_v_prediction_like_loss(loss, timesteps, noise_scheduler, v_pred_like_loss):
    scale = get_snr_scale(timesteps, noise_scheduler)
    loss = loss + loss / scale * v_pred_like_loss
    return loss


# kohya sd-scripts v0.10.0, library/custom_train_functions.py, apply_debiased_estimation.
def apply_debiased_estimation(loss, timesteps, noise_scheduler, v_prediction=False):
    snr_t = torch.stack([noise_scheduler.all_snr[t] for t in timesteps])  # batch_size
    snr_t = torch.minimum(snr_t, torch.ones_like(snr_t) * 1000)  # if timestep is 0, snr_t is inf, so limit it to 1000
    if v_prediction:  # noqa: SIM108 - kohya's form, kept
        weight = 1 / (snr_t + 1)
    else:
        weight = 1 / torch.sqrt(snr_t)
    loss = weight * loss
    return loss


# kohya sd-scripts v0.10.0, library/custom_train_functions.py, pyramid_noise_like.
def pyramid_noise_like(noise, device, iterations=6, discount=0.4) -> torch.Tensor:
    b, c, w, h = noise.shape  # EDIT: w and h get over-written, rename for a different variant!
    u = torch.nn.Upsample(size=(w, h), mode="bilinear").to(device)
    for i in range(iterations):
        r = random.random() * 2 + 2  # Rather than always going 2x,
        wn, hn = max(1, int(w / (r**i))), max(1, int(h / (r**i)))
        noise += u(torch.randn(b, c, wn, hn).to(device)) * discount**i
        if wn == 1 or hn == 1:
            break  # Lowest resolution is 1x1
    return noise / noise.std()  # Scaled back to roughly unit variance


# kohya sd-scripts v0.10.0, library/custom_train_functions.py, apply_noise_offset.
def apply_noise_offset(latents, noise, noise_offset, adaptive_noise_scale) -> torch.Tensor:
    if noise_offset is None:
        return noise
    if adaptive_noise_scale is not None:
        # latent shape: (batch_size, channels, height, width)
        # abs mean value for each channel
        latent_mean = torch.abs(latents.mean(dim=(2, 3), keepdim=True))

        # multiply adaptive noise scale to the mean value and add it to the noise offset
        noise_offset = noise_offset + adaptive_noise_scale * latent_mean
        noise_offset = torch.clamp(noise_offset, 0.0, None)  # in case of adaptive noise scale is negative

    noise = noise + noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), device=latents.device)
    return noise


# --- train_network.py ---------------------------------------------------------------------------------------------


# kohya sd-scripts v0.10.0, train_network.py, NetworkTrainer.post_process_loss (the SNR-based weights in their order).
def post_process_loss(loss, args, timesteps, noise_scheduler) -> torch.Tensor:
    if args.min_snr_gamma:
        loss = apply_snr_weight(loss, timesteps, noise_scheduler, args.min_snr_gamma, args.v_parameterization)
    if args.scale_v_pred_loss_like_noise_pred:
        loss = scale_v_prediction_loss_like_noise_prediction(loss, timesteps, noise_scheduler)
    if args.v_pred_like_loss:
        loss = add_v_prediction_like_loss(loss, timesteps, noise_scheduler, args.v_pred_like_loss)
    if args.debiased_estimation_loss:
        loss = apply_debiased_estimation(loss, timesteps, noise_scheduler, args.v_parameterization)
    return loss


# --- networks/lora.py ---------------------------------------------------------------------------------------------


# kohya sd-scripts v0.10.0, networks/lora.py, LoRAModule.forward; `self` needs kohya's attributes: org_forward,
# lora_down, lora_up, lora_dim, scale, multiplier, dropout, rank_dropout, module_dropout (None when unset), training.
def lora_module_forward(self, x):
    org_forwarded = self.org_forward(x)

    # module dropout
    if self.module_dropout is not None and self.training:  # noqa: SIM102 - kohya's form, kept
        if torch.rand(1) < self.module_dropout:
            return org_forwarded

    lx = self.lora_down(x)

    # normal dropout
    if self.dropout is not None and self.training:
        lx = torch.nn.functional.dropout(lx, p=self.dropout)

    # rank dropout
    if self.rank_dropout is not None and self.training:
        mask = torch.rand((lx.size(0), self.lora_dim), device=lx.device) > self.rank_dropout
        if len(lx.size()) == 3:
            mask = mask.unsqueeze(1)  # for Text Encoder
        elif len(lx.size()) == 4:
            mask = mask.unsqueeze(-1).unsqueeze(-1)  # for Conv2d
        lx = lx * mask

        # scaling for rank dropout: treat as if the rank is changed
        scale = self.scale * (1.0 / (1.0 - self.rank_dropout))  # redundant for readability
    else:
        scale = self.scale

    lx = self.lora_up(lx)

    return org_forwarded + lx * self.multiplier * scale


# --- library/sdxl_train_util.py and the SDXL parts of library/train_util.py --------------------------------------


# kohya sd-scripts v0.8.7, library/sdxl_train_util.py, timestep_embedding (SGM's sinusoidal embedding).
def timestep_embedding(timesteps, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half).to(
        device=timesteps.device
    )
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


# kohya sd-scripts v0.8.7, library/sdxl_train_util.py, get_timestep_embedding.
def get_timestep_embedding(x, outdim):
    assert len(x.shape) == 2
    b, dims = x.shape[0], x.shape[1]
    x = torch.flatten(x)
    emb = timestep_embedding(x, outdim)
    emb = torch.reshape(emb, (b, dims * outdim))
    return emb


# kohya sd-scripts v0.8.7, library/sdxl_train_util.py, get_size_embeddings.
def get_size_embeddings(orig_size, crop_size, target_size, device):
    emb1 = get_timestep_embedding(orig_size, 256)
    emb2 = get_timestep_embedding(crop_size, 256)
    emb3 = get_timestep_embedding(target_size, 256)
    vector = torch.cat([emb1, emb2, emb3], dim=1).to(device)
    return vector


# kohya sd-scripts v0.8.7, library/train_util.py, BaseDataset.__getitem__: the size ids of one item, from its
# original size (w, h), crop_ltrb and target size (w, h) (the lines that fill original_sizes_hw, crop_top_lefts
# and target_sizes_hw).
def size_ids(original_size, crop_ltrb, target_size, flipped):
    if not flipped:  # noqa: SIM108 (kohya's statements)
        crop_left_top = (crop_ltrb[0], crop_ltrb[1])
    else:
        # crop_ltrb[2] is right, so target_size[0] - crop_ltrb[2] is left in flipped image
        crop_left_top = (target_size[0] - crop_ltrb[2], crop_ltrb[1])
    original_size_hw = (int(original_size[1]), int(original_size[0]))
    crop_top_left = (int(crop_left_top[1]), int(crop_left_top[0]))
    target_size_hw = (int(target_size[1]), int(target_size[0]))
    return original_size_hw, crop_top_left, target_size_hw


# kohya sd-scripts v0.8.7, library/train_util.py, pool_workaround.
def pool_workaround(text_encoder, last_hidden_state, input_ids, eos_token_id):
    eos_token_mask = (input_ids == eos_token_id).int()
    eos_token_index = torch.argmax(eos_token_mask, dim=1)  # this will be 0 if there is no EOS token, it's fine
    eos_token_index = eos_token_index.to(device=last_hidden_state.device)
    pooled_output = last_hidden_state[
        torch.arange(last_hidden_state.shape[0], device=last_hidden_state.device), eos_token_index
    ]
    pooled_output = text_encoder.text_projection(pooled_output.to(text_encoder.text_projection.weight.dtype))
    pooled_output = pooled_output.to(last_hidden_state.dtype)
    return pooled_output


# kohya sd-scripts v0.8.7, library/train_util.py, get_hidden_states_sdxl (weight_dtype casting left out). Its
# hidden_states[11] is CLIP-L's penultimate layer (12 layers); written [-2] here, the same layer for CLIP-L, so that
# the tiny test encoders take their penultimate one too.
def get_hidden_states_sdxl(
    max_token_length, input_ids1, input_ids2, tokenizer1, tokenizer2, text_encoder1, text_encoder2
):  # fmt: skip
    b_size = input_ids1.size()[0]
    input_ids1 = input_ids1.reshape((-1, tokenizer1.model_max_length))  # batch_size*n, 77
    input_ids2 = input_ids2.reshape((-1, tokenizer2.model_max_length))  # batch_size*n, 77

    enc_out = text_encoder1(input_ids1, output_hidden_states=True, return_dict=True)
    hidden_states1 = enc_out["hidden_states"][-2]

    enc_out = text_encoder2(input_ids2, output_hidden_states=True, return_dict=True)
    hidden_states2 = enc_out["hidden_states"][-2]  # penultimate layer
    pool2 = pool_workaround(text_encoder2, enc_out["last_hidden_state"], input_ids2, tokenizer2.eos_token_id)

    # b*n, 77, 768 or 1280 -> b, n*77, 768 or 1280
    n_size = 1 if max_token_length is None else max_token_length // 75
    hidden_states1 = hidden_states1.reshape((b_size, -1, hidden_states1.shape[-1]))
    hidden_states2 = hidden_states2.reshape((b_size, -1, hidden_states2.shape[-1]))

    if max_token_length is not None:
        # bs*3, 77, 768 or 1024 -> bs, 77*3, 768 or 1024 -> bs, 3*75+2, 768 or 1024 (the first BOS, the last EOS)
        states_list = [hidden_states1[:, 0].unsqueeze(1)]  # <BOS>
        for i in range(1, max_token_length, tokenizer1.model_max_length):
            states_list.append(hidden_states1[:, i : i + tokenizer1.model_max_length - 2])  # after <BOS>, up to <EOS>
        states_list.append(hidden_states1[:, -1].unsqueeze(1))  # <EOS>
        hidden_states1 = torch.cat(states_list, dim=1)

        states_list = [hidden_states2[:, 0].unsqueeze(1)]  # <BOS>
        for i in range(1, max_token_length, tokenizer2.model_max_length):
            chunk = hidden_states2[:, i : i + tokenizer2.model_max_length - 2]  # after <BOS>, up to the last
            states_list.append(chunk)  # after <BOS>, up to <EOS>
        states_list.append(hidden_states2[:, -1].unsqueeze(1))  # <EOS> or <PAD>
        hidden_states2 = torch.cat(states_list, dim=1)

        # pool: the first of the n chunks
        pool2 = pool2[::n_size]

    return hidden_states1, hidden_states2, pool2
