"""Training settings under kohya sd-scripts' names, read from a TOML `--config_file` like the tutorial's.

Top-level tables are flattened one level, as kohya does ([training_arguments] output_dir = ... is output_dir).
Unlike kohya, an unknown key is an error naming the key and the closest known one: a misspelt option that is
silently ignored is the trap users of kohya fall into most.

Each field is declared with opt(default, help, category, ...): that description is the option schema
(lib_sdtrain.train.options) behind `sdtrain train --help`, the type checks, TOML writing, presets and the UI's form.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from lib_sdtrain.errors import ConfigError, shorten
from lib_sdtrain.train.kohya_keys import ACCEPTED_OUTSIDE_SCHEMA
from lib_sdtrain.utils.path_kinds import PathKind

# The value sets that options with choices accept (the CLI, the TOML reader and the UI all read them from here).
NETWORK_MODULES = ("networks.lora", "lycoris.kohya")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
SAVE_PRECISIONS = ("fp16", "bf16", "float", "fp32")  # lib_sdtrain.network.kohya_file.SAVE_DTYPES
OPTIMIZERS = ("AdamW", "AdamW8bit", "Lion", "Adafactor", "Prodigy")  # lib_sdtrain.train.optim.make_optimizer
# kohya v0.9's lr_scheduler names (lib_sdtrain.train.optim.make_lr_scheduler); piecewise_constant is refused there,
# as it needs lr_scheduler_args step rules.
LR_SCHEDULERS = (
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial", "adafactor",
    "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay", "piecewise_constant",
)  # fmt: skip
# kohya's sample_sampler names (lib_sdtrain.train.sampling.sample_scheduler); k_* are aliases of the plain names.
SAMPLE_SAMPLERS = (
    "ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++", "dpmsingle",
    "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a",
)  # fmt: skip
# kohya's save_model_as: a LoRA is safetensors or ckpt/pt (a torch pickle); a fine-tune also a diffusers folder.
SAVE_MODEL_FORMATS = ("safetensors", "ckpt", "pt", "diffusers", "diffusers_safetensors")
MAX_TOKEN_LENGTHS = (75, 150, 225)
LOSS_TYPES = ("l2", "l1", "huber", "smooth_l1")  # kohya's loss_type (l1 from later sd-scripts)
HUBER_SCHEDULES = ("constant", "exponential", "snr")
# network_args keys: kohya networks.lora's LoCon ones, and LyCORIS' algo limited to what LoRANetwork builds.
NETWORK_ARG_ALGOS = ("lora", "locon")

# TrainConfig fields that are bookkeeping, not settings: no option, no CLI flag, no TOML key.
INTERNAL_FIELDS = frozenset({"ignored", "given"})


def opt(
    default: Any,
    help: str,
    category: str,
    choices: tuple | None = None,
    common: bool = False,
    kind: PathKind | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
    per_subset: bool = False,
    trains: tuple[str, ...] | None = None,
) -> Any:  # returns a dataclasses.Field; typed Any so the field annotations stay the value types
    """A TrainConfig field carrying its user-facing description; lib_sdtrain.train.options turns these into the
    schema that drives the CLI help, TOML validation and writing, presets and the UI's form.

    `kind` says what a text or list option holds (a path to check, a name, plain text); options with `choices` are
    plain text. `minimum`/`maximum` bound a number (inclusive), `below` from above (exclusive). `per_subset`: a
    caption or image setting that a dataset_config may set per subset, as kohya's. `trains`: the kinds of training
    (options.TRAINING_KINDS) it means something for; by default a network option's are the LoRA kinds, any other's
    all of them."""
    metadata = {
        "help": help, "category": category, "choices": choices, "common": common, "kind": kind,
        "range": (minimum, maximum, below), "per_subset": per_subset, "trains": trains,
    }  # fmt: skip
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    # --- model
    pretrained_model_name_or_path: str = opt(
        "",
        "The base model to train from: a .safetensors or .ckpt checkpoint, a diffusers model folder or a Hugging "
        "Face hub id. Required.",
        "model",
        common=True,
        kind=PathKind.MODEL,
    )
    tokenizer: str | None = opt(
        None,
        "Folder or hub id of the CLIP tokenizer, for single-file checkpoints that carry none. Empty: the WebUI's, "
        "a tokenizer/ folder beside the model, or the local Hugging Face cache.",
        "model",
        kind=PathKind.MODEL,
    )
    vae: str | None = opt(
        None,
        "A VAE to use instead of the checkpoint's (kohya's vae), for encoding the training images and for the "
        "samples: a .safetensors / .ckpt VAE file, a checkpoint, or a diffusers (VAE) folder. A fine-tune saves "
        "it into the model. Empty: the checkpoint's VAE.",
        "model",
        kind=PathKind.MODEL,
    )
    v_parameterization: bool = opt(
        False,
        "Train with the v-prediction objective, for SD 2.x 768-v models (kohya's --v_parameterization). "
        "Leave off for SD 1.x and SD 2.x base (512) models.",
        "model",
    )
    clip_skip: int = opt(
        1,
        "Take the text encoder's n-th layer from the end, like the WebUI's 'Clip skip': 1 = the last layer "
        "(SD 1.5 and photo models), 2 = the second to last (most anime models).",
        "model",
        minimum=1,
    )
    # --- dataset
    train_data_dir: str = opt(
        "",
        "Folder with the training images: kohya's N_name subfolders with caption files, or the images that "
        "in_json lists. Required.",
        "dataset",
        common=True,
        kind=PathKind.READ_FOLDER,
    )
    in_json: str | None = opt(
        None,
        "Metadata file written by `sdtrain merge` or `sdtrain buckets` (meta_clean.json, or meta_lat.json with "
        "cached latents). Empty: read N_name folders and caption files instead.",
        "dataset",
        kind=PathKind.READ_FILE,
    )
    dataset_config: str | None = opt(
        None,
        "kohya's dataset TOML ([general], [[datasets]], [[datasets.subsets]] with image_dir, num_repeats, "
        "class_tokens, is_reg, metadata_file, ...). When set it replaces train_data_dir, in_json and reg_data_dir, "
        "and its resolution, batch_size and bucket settings win, as in kohya.",
        "dataset",
        kind=PathKind.READ_FILE,
    )
    reg_data_dir: str | None = opt(
        None,
        "Folder of regularisation images in kohya's N_name sub-folders (N repeats, name = the class words used as "
        "the caption of images without a caption file). Each epoch uses as many of them as there are training "
        "images (with repeats), as kohya does. Empty: none.",
        "dataset",
        kind=PathKind.READ_FOLDER,
    )
    dataset_repeats: int = opt(
        1,
        "How many times each image is seen per epoch when training from in_json (in folder mode the N of N_name "
        "sets it). 1 or more.",
        "dataset",
        common=True,
        minimum=1,
    )
    caption_extension: str = opt(
        ".caption",
        "Extension of the caption file beside each image in folder mode, e.g. .caption or .txt.",
        "dataset",
        kind=PathKind.SUFFIX,
    )
    resolution: str = opt(
        "512,512",
        "Training size in pixels as 'width,height' (one number for a square): 512,512 for SD 1.5, 768,768 for "
        "SD 2.x 768 models. Images are bucketed to about this area.",
        "dataset",
        common=True,
        kind=PathKind.TEXT,
    )
    min_bucket_reso: int = opt(
        256,
        "Smallest side of an aspect-ratio bucket, in pixels (kohya's min_bucket_reso).",
        "dataset",
        minimum=8,
    )
    max_bucket_reso: int = opt(
        1024,
        "Largest side of an aspect-ratio bucket, in pixels (kohya's max_bucket_reso).",
        "dataset",
        minimum=8,
    )
    bucket_reso_steps: int = opt(
        64,
        "Bucket sides are multiples of this many pixels (kohya's bucket_reso_steps); 64 suits every SD model, "
        "it must be a multiple of 8.",
        "dataset",
        minimum=8,
    )
    enable_bucket: bool = opt(
        True,
        "Aspect-ratio buckets: each image trains at the bucket of about `resolution`'s area nearest its shape. Off "
        "(kohya's default): every image is resized to cover `resolution` and cropped to it. Metadata with "
        "train_resolution (from `sdtrain buckets`) always uses its buckets.",
        "dataset",
    )
    bucket_no_upscale: bool = opt(
        False,
        "Never enlarge an image: its bucket is its own size (shrunk to `resolution`'s area when larger) with the "
        "sides cut down to multiples of bucket_reso_steps; min/max_bucket_reso are not used. For metadata datasets "
        "it says the cached latents were made so by `sdtrain buckets --bucket_no_upscale`.",
        "dataset",
    )
    shuffle_caption: bool = opt(
        False,
        "Shuffle the comma-separated tags of each caption at every step, so no tag order is learnt; keep_tokens "
        "keeps the first ones (the trigger word) in place.",
        "dataset",
        per_subset=True,
    )
    keep_tokens: int = opt(
        0,
        "How many leading comma-separated tags stay first, never shuffled or dropped: 1 keeps the trigger word "
        "in front. 0: none.",
        "dataset",
        minimum=0,
        per_subset=True,
    )
    caption_dropout_rate: float = opt(
        0.0,
        "Fraction of images (0 to 1) trained with an empty caption, so the concept also shows without its "
        "prompt. 0: never.",
        "dataset",
        minimum=0,
        maximum=1,
        per_subset=True,
    )
    max_token_length: int = opt(
        75,
        "Longest caption in CLIP tokens: 75 (one chunk, kohya's default), 150 or 225 (two or three chunks of 75, "
        "read the way the WebUI reads long prompts).",
        "dataset",
        choices=MAX_TOKEN_LENGTHS,
    )
    flip_aug: bool = opt(
        False,
        "Also train on horizontally mirrored images: more variety for symmetric subjects; leave off for text, "
        "logos or one-sided features.",
        "dataset",
        per_subset=True,
    )
    random_crop: bool = opt(
        False,
        "Crop an image to its bucket at a random place at each step instead of the centre (kohya's random_crop); "
        "without buckets an image larger than `resolution` is cut at its own scale, as in kohya. Images are then "
        "encoded at every step: it cannot be used with cached latents (cache_latents true or .npz files).",
        "dataset",
        per_subset=True,
    )
    color_aug: bool = opt(
        False,
        "Weak colour augmentation (kohya's color_aug): a third of the steps shift an image's hue (up to 16 "
        "degrees) or its gamma (0.95 to 1.05). Images are then encoded at every step: not with cached latents.",
        "dataset",
        per_subset=True,
    )
    caption_prefix: str | None = opt(
        None,
        "Text put before every caption, with a space (kohya's caption_prefix). Empty: none.",
        "dataset",
        kind=PathKind.TEXT,
        per_subset=True,
    )
    caption_suffix: str | None = opt(
        None,
        "Text put after every caption, with a space (kohya's caption_suffix). Empty: none.",
        "dataset",
        kind=PathKind.TEXT,
        per_subset=True,
    )
    caption_separator: str = opt(
        ",",
        "What separates the tags of a caption for shuffle_caption, keep_tokens, tag dropout and token warmup "
        "(kohya's caption_separator); the processed tags are joined with ', '.",
        "dataset",
        kind=PathKind.TEXT,
        per_subset=True,
    )
    keep_tokens_separator: str = opt(
        "",
        "A marker such as ||| in captions: the tags before it stay first and unshuffled, and the tags after a "
        "second marker stay last (kohya's keep_tokens_separator; it replaces keep_tokens in captions that have it). "
        "Used, and removed, only with shuffle_caption, caption_tag_dropout_rate or token_warmup_step, as in kohya. "
        "Empty: none.",
        "dataset",
        kind=PathKind.TEXT,
        per_subset=True,
    )
    secondary_separator: str | None = opt(
        None,
        "A second tag separator, e.g. ;;; in 'red hair;;;long hair': such tags are shuffled and dropped together "
        "and the separator becomes caption_separator afterwards (kohya's secondary_separator). Empty: none.",
        "dataset",
        kind=PathKind.TEXT,
        per_subset=True,
    )
    enable_wildcard: bool = opt(
        False,
        "Wildcards in captions (kohya's enable_wildcard): {red|blue} picks one choice at each step, and a caption "
        "file with several lines gives one line at random ({{ and }} are plain braces). Off: the first line only.",
        "dataset",
        per_subset=True,
    )
    caption_tag_dropout_rate: float = opt(
        0.0,
        "Chance (0 to 1) that each tag after keep_tokens is left out at a step (kohya's caption_tag_dropout_rate), "
        "so no single tag carries the concept. 0: never.",
        "dataset",
        minimum=0,
        maximum=1,
        per_subset=True,
    )
    caption_dropout_every_n_epochs: int = opt(
        0,
        "Train every n-th epoch with empty captions (kohya's caption_dropout_every_n_epochs). 0: never.",
        "dataset",
        minimum=0,
        per_subset=True,
    )
    token_warmup_min: int = opt(
        1,
        "Token warmup: how many tags (after the kept ones) captions start with (kohya's token_warmup_min).",
        "dataset",
        minimum=0,
        per_subset=True,
    )
    token_warmup_step: float = opt(
        0.0,
        "Token warmup: the step by which captions have grown from token_warmup_min tags to all of them; below 1 "
        "it is a fraction of max_train_steps (kohya's token_warmup_step). 0: off, whole captions from the start.",
        "dataset",
        minimum=0,
        per_subset=True,
    )
    # --- network (None: full fine-tune)
    network_module: str | None = opt(
        None,
        "What to train: networks.lora trains a LoRA (a LoCon with conv_dim); lycoris.kohya is accepted for "
        "LyCORIS configs and trains the same. Empty: a full fine-tune of the model.",
        "network",
        choices=NETWORK_MODULES,
        common=True,
    )
    network_dim: int = opt(
        4,
        "LoRA rank, kohya's 'Network Rank (Dimension)': how much the LoRA can learn, usually 8 to 128. The file "
        "grows with it (dim 32 is about 37 MB in fp16 for SD 1.5).",
        "network",
        common=True,
        minimum=1,
    )
    network_alpha: float = opt(
        1.0,
        "LoRA alpha, kohya's 'Network Alpha': the LoRA's output is scaled by alpha / dim, so a lower alpha "
        "learns more gently; usually dim / 2 or 1. 0: the same as dim.",
        "network",
        common=True,
        minimum=0,
    )
    network_dropout: float = opt(
        0.0,
        "Dropout on the LoRA's inner neurons while training, 0 to 1 (kohya's network_dropout); 0.1 can curb "
        "overfitting. 0: off.",
        "network",
        minimum=0,
        below=1,
    )
    conv_dim: int | None = opt(
        None,
        "Rank of an extra LoRA on the UNet's convolutions (LoCon; kohya's network_args conv_dim), for styles and "
        "textures; 4 to 32. Empty: attention and linear layers only.",
        "network",
        minimum=0,
        trains=("locon",),
    )
    conv_alpha: float | None = opt(
        None,
        "Alpha of the convolution LoRA (kohya's network_args conv_alpha), scaling it by conv_alpha / conv_dim. "
        "Empty: the same as conv_dim.",
        "network",
        minimum=0,
        trains=("locon",),
    )
    network_args: list[str] = opt(  # noqa: RUF009 - opt gives a list a default_factory
        [],
        'Extra network settings as kohya writes them, "key=value" texts: conv_dim and conv_alpha (LoCon; '
        "conv_alpha defaults to 1 as in kohya), rank_dropout and module_dropout (kohya's dropout of LoRA ranks and "
        "of whole modules while training), and LyCORIS' algo=lora or locon. Other keys (loha, lokr, block "
        "weights) are refused, as SD-Train does not implement them.",
        "network",
        kind=PathKind.TEXT,
    )
    network_train_unet_only: bool = opt(
        False,
        "Train only the UNet part of the LoRA, not the text encoder: less memory, and common for styles.",
        "network",
    )
    network_train_text_encoder_only: bool = opt(
        False, "Train only the text-encoder part of the LoRA (rarely wanted).", "network"
    )
    network_weights: str | None = opt(
        None,
        "An existing LoRA .safetensors to continue training from; its dim must match network_dim. Empty: start "
        "from scratch.",
        "network",
        kind=PathKind.READ_FILE,
    )
    dim_from_weights: bool = opt(
        False,
        "Take the LoRA's layers, dims and alphas (conv dims too) from network_weights' file instead of network_dim "
        "/ network_alpha / conv_dim (kohya's dim_from_weights); needs network_weights.",
        "network",
    )
    network_multiplier: float = opt(
        1.0,
        "Strength of the LoRA while it trains and in the samples (kohya's network_multiplier); the saved file is "
        "not scaled. 1: full strength.",
        "network",
    )
    scale_weight_norms: float | None = opt(
        None,
        "Max-norm regularisation (kohya's scale_weight_norms): after each step, every LoRA module whose weight "
        "change has a norm above this is scaled down to it, against overtraining; 1 is a good start. The number "
        "of modules scaled and the mean and largest norm show in the progress and the log. Empty: off.",
        "network",
        minimum=0,
    )
    # --- optimizer and learning rate
    learning_rate: float = opt(
        1e-4,
        "Base learning rate, used where unet_lr or text_encoder_lr is empty. Typical: 1e-4 for a LoRA with "
        "AdamW, 1e-6 to 5e-6 for a full fine-tune, 1.0 with Prodigy.",
        "optimizer",
        common=True,
        minimum=0,
    )
    unet_lr: float | None = opt(
        None,
        "Learning rate of the UNet (its LoRA, or the whole UNet in a fine-tune). Empty: learning_rate; 0: the "
        "UNet is frozen (not trained), as in kohya.",
        "optimizer",
        minimum=0,
    )
    text_encoder_lr: float | None = opt(
        None,
        "Learning rate of the text encoder, usually a half to a tenth of unet_lr (e.g. 5e-5). Empty: "
        "learning_rate; 0: the text encoder is frozen (not trained), as in kohya.",
        "optimizer",
        minimum=0,
    )
    optimizer_type: str = opt(
        "AdamW",
        "AdamW (reliable default); AdamW8bit (less memory; CUDA and bitsandbytes); Lion (lion-pytorch; about a "
        "third of AdamW's learning rate); Adafactor; Prodigy (prodigyopt; finds its own step, learning_rate 1.0).",
        "optimizer",
        choices=OPTIMIZERS,
        common=True,
    )
    optimizer_args: list[str] = opt(  # noqa: RUF009 - opt gives a list a default_factory
        [],
        'Extra optimizer settings as kohya writes them, "key=value" texts with Python literal values: '
        '"weight_decay=0.01", "betas=0.9,0.99", "relative_step=False". Adafactor defaults to kohya\'s '
        "relative_step=True (its own step size and schedule; learning rates then only set the first step).",
        "optimizer",
        kind=PathKind.TEXT,
    )
    max_grad_norm: float = opt(
        1.0,
        "Clip the gradient norm to this value, against loss spikes (kohya's max_grad_norm). 0: no clipping.",
        "optimizer",
        minimum=0,
    )
    lr_scheduler: str = opt(
        "constant",
        "How the learning rate changes over the run (diffusers' schedules, as in kohya): constant, linear decay "
        "to 0, cosine decay, cosine_with_restarts, polynomial; constant_with_warmup ramps up first.",
        "optimizer",
        choices=LR_SCHEDULERS,
    )
    lr_warmup_steps: int | float = opt(
        0,
        "Steps over which the learning rate ramps up from 0 at the start, or a fraction of the run below 1 (0.1: "
        "the first tenth), as kohya v0.9. constant and adafactor take none (an error, as in kohya). 0: no warm-up.",
        "optimizer",
        minimum=0,
    )
    lr_scheduler_num_cycles: int = opt(
        1,
        "Cosine waves of cosine_with_restarts (restarts + 1); also the cycles of cosine_with_min_lr and "
        "warmup_stable_decay's decay, as kohya counts them.",
        "optimizer",
        minimum=1,
    )
    lr_scheduler_power: float = opt(
        1.0,
        "Power of the polynomial schedule's decay: 1 is linear, higher drops faster at first.",
        "optimizer",
        minimum=0,
    )
    lr_scheduler_min_lr_ratio: float | None = opt(
        None,
        "The lowest learning rate as a fraction of the starting one, for cosine_with_min_lr (required there) and "
        "warmup_stable_decay (empty: 0).",
        "optimizer",
        minimum=0,
        maximum=1,
    )
    lr_decay_steps: int | float = opt(
        0,
        "warmup_stable_decay: steps of the final decay, or a fraction of the run below 1; the steps between "
        "warm-up and decay keep the full rate.",
        "optimizer",
        minimum=0,
    )
    lr_scheduler_timescale: int | None = opt(
        None,
        "inverse_sqrt: the timescale of the decay. Empty: lr_warmup_steps, as in kohya.",
        "optimizer",
        minimum=1,
    )
    # --- training
    max_train_steps: int = opt(
        1600,
        "Length of the run in optimizer steps (kohya's max_train_steps); max_train_epochs wins when it is set.",
        "training",
        common=True,
        minimum=1,
    )
    max_train_epochs: int | None = opt(
        None,
        "Length of the run in epochs (passes over every image with its repeats); when set it replaces "
        "max_train_steps. Empty: use max_train_steps.",
        "training",
        common=True,
        minimum=1,
    )
    train_batch_size: int = opt(
        1,
        "Images per step on each GPU: higher trains faster per image but needs more GPU memory (1 or 2 fit "
        "8 GB at 512 px).",
        "training",
        common=True,
        minimum=1,
    )
    gradient_accumulation_steps: int = opt(
        1,
        "Add up the gradients of this many batches before each optimizer step: the effect of a batch this many "
        "times larger without its memory.",
        "training",
        minimum=1,
    )
    mixed_precision: str = opt(
        "no",
        "Compute precision: no (fp32; safe, slow), fp16 (GPU only), bf16 (RTX 30xx and newer, or the CPU; steadier "
        "than fp16).",
        "training",
        choices=MIXED_PRECISIONS,
        common=True,
    )
    full_fp16: bool = opt(
        False,
        "Keep the trained weights in fp16 too, not fp32 (kohya's full_fp16; needs mixed_precision fp16): the "
        "least memory, at the risk of updates too small for fp16 to register.",
        "training",
    )
    full_bf16: bool = opt(
        False,
        "Keep the trained weights in bf16 too, not fp32 (kohya's full_bf16; needs mixed_precision bf16): less "
        "memory; best with an optimizer that tolerates it (Adafactor, AdamW with a larger learning rate).",
        "training",
    )
    allow_tf32: bool = opt(
        True,
        "On RTX 30xx and newer GPUs, run fp32 matrix products in TF32 (much faster, precision ample for training, "
        "as the WebUI and diffusers use). Turn off only to compare results bit for bit with fp32. No effect on the "
        "CPU.",
        "training",
    )
    gradient_checkpointing: bool = opt(
        False,
        "Recompute activations during the backward pass instead of keeping them: far less GPU memory, roughly "
        "20-30 percent slower.",
        "training",
    )
    cache_latents: bool = opt(
        True,
        "Encode each image folder's images with the VAE once before training and keep the latents in memory, "
        "instead of at every step: much faster, and the VAE leaves the GPU. Off, or an option that changes the "
        "pixels at every step (random_crop, color_aug), encodes at each step. Metadata datasets use the latents "
        "`sdtrain buckets` cached. kohya's default is off.",
        "training",
    )
    cache_latents_to_disk: bool = opt(
        False,
        "Also write the cached latents as kohya's .npz beside each image, and reuse them in later runs when "
        "they match the image's bucket.",
        "training",
    )
    cache_text_encoder_outputs: bool = opt(
        False,
        "kohya's SDXL switch to encode each caption once before training. SD-Train does so by itself whenever the "
        "captions are fixed and the text encoders frozen; set, it is refused where kohya refuses it (captions "
        "that change per step, a trained text encoder), so a kohya SDXL config behaves as it did there.",
        "training",
    )
    cache_text_encoder_outputs_to_disk: bool = opt(
        False,
        "kohya's switch to also keep those outputs on disk for later runs; accepted as a speed-only no-op (SD-Train "
        "encodes them again, in seconds), with cache_text_encoder_outputs' checks.",
        "training",
    )
    vae_batch_size: int = opt(
        1,
        "Images per VAE call when caching latents (kohya's vae_batch_size): higher is faster, needs more memory.",
        "training",
        minimum=1,
    )
    max_data_loader_n_workers: int = opt(
        8,
        "Threads that load and prepare the next batches while the GPU trains (kohya's max_data_loader_n_workers; "
        "at most the CPU count minus one). 0: load each batch when it is needed.",
        "training",
        minimum=0,
    )
    dynamo_backend: str = opt(
        "no",
        "Compile the UNet with torch.compile and this backend (kohya's dynamo_backend): inductor is usually "
        "fastest on a GPU after a slow first step; no: off. Falls back to no compilation, with a message, where "
        "the backend fails.",
        "training",
        kind=PathKind.TEXT,
    )
    noise_offset: float = opt(
        0.0,
        "Offsets the noise per channel (kohya's noise_offset) so the model learns very dark and very bright "
        "images; 0.05 to 0.1 is typical. 0: off.",
        "training",
        minimum=0,
    )
    min_snr_gamma: float | None = opt(
        None,
        "Min-SNR loss weighting (kohya's min_snr_gamma): evens out the loss over noise levels and converges "
        "faster; 5 is the paper's value. Empty: off.",
        "training",
        minimum=0,
    )
    noise_offset_random_strength: bool = opt(
        False,
        "Draw the noise offset's strength uniformly between 0 and noise_offset at each step (kohya's "
        "noise_offset_random_strength); needs noise_offset.",
        "training",
    )
    adaptive_noise_scale: float | None = opt(
        None,
        "Adds this times the absolute mean of each latent channel to noise_offset (kohya's adaptive_noise_scale), "
        "so images far from mid-grey get more offset; about noise_offset / 10 is usual. Needs noise_offset. "
        "Empty: off.",
        "training",
    )
    multires_noise_iterations: int | None = opt(
        None,
        "Multi-resolution (pyramid) noise with this many layers (kohya's multires_noise_iterations; 6 to 10 is "
        "usual): adds coarser noise so large areas and overall brightness are learnt. Empty or 0: off.",
        "training",
        minimum=0,
    )
    multires_noise_discount: float = opt(
        0.3,
        "Weight of each coarser layer of multires noise relative to the one before (kohya's "
        "multires_noise_discount): lower is weaker; used only with multires_noise_iterations.",
        "training",
        minimum=0,
        maximum=1,
    )
    ip_noise_gamma: float | None = opt(
        None,
        "Input perturbation (kohya's ip_noise_gamma): the noised latents get this much extra noise that the "
        "target leaves out, a regulariser; about 0.1. Empty: off.",
        "training",
        minimum=0,
    )
    ip_noise_gamma_random_strength: bool = opt(
        False,
        "Draw the input perturbation's strength uniformly between 0 and ip_noise_gamma at each step; needs "
        "ip_noise_gamma.",
        "training",
    )
    min_timestep: int | None = opt(
        None,
        "Train only timesteps (noise levels) from this one on, 0 to 999 (kohya's min_timestep). Empty: 0.",
        "training",
        minimum=0,
        maximum=999,
    )
    max_timestep: int | None = opt(
        None,
        "Train only timesteps below this one, 1 to 1000 (kohya's max_timestep; exclusive). Empty: 1000.",
        "training",
        minimum=1,
        maximum=1000,
    )
    zero_terminal_snr: bool = opt(
        False,
        "Rescale the training noise schedule so the last timestep is pure noise (kohya's zero_terminal_snr, "
        "arXiv 2305.08891): lets a model learn very dark and bright images; meant for v-prediction models. Samples "
        "use the usual schedule, as in kohya.",
        "training",
    )
    loss_type: str = opt(
        "l2",
        "The loss (kohya's loss_type): l2 (mean squared error, the usual), l1 (absolute error), huber or "
        "smooth_l1 (squared for small errors, linear for large ones: less pulled by outliers; see huber_c).",
        "training",
        choices=LOSS_TYPES,
    )
    huber_schedule: str = opt(
        "snr",
        "How huber / smooth_l1's threshold changes with the timestep (kohya's huber_schedule): snr (near 1 at low "
        "noise, huber_c at high noise), exponential (1 to huber_c), constant (huber_c).",
        "training",
        choices=HUBER_SCHEDULES,
    )
    huber_c: float = opt(
        0.1,
        "The threshold of the huber and smooth_l1 losses, or its end value under huber_schedule (kohya's huber_c).",
        "training",
        minimum=0,
    )
    huber_scale: float = opt(
        1.0,
        "Multiplies huber_c under the constant and exponential huber schedules (sd-scripts' huber_scale; 1 is "
        "v0.9's behaviour).",
        "training",
        minimum=0,
    )
    debiased_estimation_loss: bool = opt(
        False,
        "Debiased estimation loss (kohya's debiased_estimation_loss, arXiv 2310.08442): weights each step's loss "
        "by 1 / sqrt(SNR) (1 / (SNR + 1) for v-prediction), evening out noise levels like min_snr_gamma.",
        "training",
    )
    scale_v_pred_loss_like_noise_pred: bool = opt(
        False,
        "v-prediction models only: scale the loss by SNR / (SNR + 1) so timesteps weigh as in epsilon training "
        "(kohya's scale_v_pred_loss_like_noise_pred).",
        "training",
    )
    v_pred_like_loss: float | None = opt(
        None,
        "Epsilon models only: add this fraction of the loss weighted as a v-prediction loss (kohya's "
        "v_pred_like_loss; kohya applies it to LoRAs, SD-Train to fine-tunes too). Empty: off.",
        "training",
        minimum=0,
    )
    prior_loss_weight: float = opt(
        1.0,
        "Weight of the regularisation images' loss (kohya's prior_loss_weight): 1 counts them like training "
        "images, lower lets the subject win over the class.",
        "training",
        minimum=0,
    )
    seed: int = opt(
        42,
        "Random seed for noise, shuffling and dropout: the same seed and settings repeat a run.",
        "training",
        minimum=0,
        maximum=2**32 - 1,
    )
    train_text_encoder: bool = opt(
        False,
        "Full fine-tune only: also train the text encoder (more memory, easily overtrained). A LoRA trains its "
        "text-encoder part unless network_train_unet_only.",
        "training",
        trains=("full",),
    )
    logging_dir: str | None = opt(
        None,
        "Folder for TensorBoard logs (loss and learning rates under kohya's names). Empty: no logs.",
        "training",
        kind=PathKind.WRITE_FOLDER,
    )
    log_prefix: str | None = opt(
        None,
        "Name of each run's TensorBoard folder before its timestamp (kohya's log_prefix). Empty: output_name.",
        "training",
        kind=PathKind.NAME,
    )
    # --- saving
    output_dir: str = opt(
        "output",
        "Folder for the trained file, its intermediate saves, sample images and states.",
        "saving",
        common=True,
        kind=PathKind.WRITE_FOLDER,
    )
    output_name: str = opt(
        "last",
        "Name of the result without extension (<output_dir>/<output_name>.safetensors); a LoRA is then used in "
        "the WebUI as <lora:output_name:1>.",
        "saving",
        common=True,
        kind=PathKind.NAME,
    )
    save_precision: str = opt(
        "fp16",
        "Precision of the saved weights: fp16 (half the size, what the WebUI uses), bf16, or float / fp32 "
        "(full precision).",
        "saving",
        choices=SAVE_PRECISIONS,
    )
    save_every_n_epochs: int | None = opt(
        None,
        "Also save <name>-000002.safetensors every n epochs, to compare stages or keep one from before "
        "overfitting. Empty: only the final file.",
        "saving",
        common=True,
        minimum=1,
    )
    save_every_n_steps: int | None = opt(
        None,
        "Also save <name>-step00000500.safetensors every n optimizer steps. Empty: off.",
        "saving",
        minimum=1,
    )
    save_n_epoch_ratio: int | None = opt(
        None,
        "Save about this many intermediate files over the run, evenly: sets save_every_n_epochs to epochs / n "
        "(at least 1), as kohya. Empty: off.",
        "saving",
        minimum=1,
    )
    save_last_n_epochs: int | None = opt(
        None,
        "Keep only the newest n epoch saves: an older <name>-0000NN file is deleted when a new one is written, "
        "as kohya. Empty: keep all.",
        "saving",
        minimum=1,
    )
    save_last_n_epochs_state: int | None = opt(
        None,
        "Keep only the newest n epoch states (<name>-0000NN-state). Empty: save_last_n_epochs.",
        "saving",
        minimum=1,
    )
    save_last_n_steps: int | None = opt(
        None,
        "Keep the step saves of only the last n steps: older <name>-stepNNNNNNNN files are deleted, as kohya. "
        "Empty: keep all.",
        "saving",
        minimum=1,
    )
    save_last_n_steps_state: int | None = opt(
        None,
        "Keep the step states of only the last n steps. Empty: save_last_n_steps.",
        "saving",
        minimum=1,
    )
    save_model_as: str = opt(
        "safetensors",
        "File format: safetensors (what the WebUI prefers), ckpt or pt (a torch pickle; a LoRA's holds no "
        "metadata); a full fine-tune also diffusers or diffusers_safetensors (a diffusers model folder).",
        "saving",
        choices=SAVE_MODEL_FORMATS,
    )
    no_metadata: bool = opt(
        False,
        "Write only kohya's minimum ss_* metadata into a LoRA (base model, network and resolution settings; no "
        "dataset, tags or training settings), as kohya's no_metadata.",
        "saving",
    )
    training_comment: str | None = opt(
        None,
        "A note stored in the LoRA as ss_training_comment, shown by the WebUI. Empty: none.",
        "saving",
        kind=PathKind.TEXT,
    )
    save_state: bool = opt(
        False,
        "With each save, also write a resumable training state (<name>-000002-state folder with the optimizer "
        "and position), for resume.",
        "saving",
    )
    resume: str | None = opt(
        None,
        "A state folder (e.g. output/<name>-000002-state) to continue an interrupted run from, optimizer and step "
        "included. Empty: start fresh.",
        "saving",
        kind=PathKind.READ_FOLDER,
    )
    # --- sample images
    sample_every_n_steps: int | None = opt(
        None,
        "Generate sample images every n optimizer steps. Empty: off.",
        "sampling",
        minimum=1,
    )
    sample_every_n_epochs: int | None = opt(
        None,
        "Generate sample images at the end of every n epochs. Empty: off.",
        "sampling",
        common=True,
        minimum=1,
    )
    sample_prompts: str | None = opt(
        None,
        "File of sample prompts, as kohya reads it: a text file with one per line, prompt --n negative --w 512 "
        "--h 512 --d seed --s steps --l cfg --ss sampler; or kohya's .toml ([prompt] with [[prompt.subset]]) or "
        ".json (a list of lines or of objects). (word:1.2), [word] and prompts over 75 tokens read as in the "
        "WebUI. Empty: no samples.",
        "sampling",
        common=True,
        kind=PathKind.READ_FILE,
    )
    sample_sampler: str = opt(
        "ddim",
        "Sampler of the sample images (kohya's names; --ss in a prompt overrides it): ddim, euler, euler_a, "
        "dpmsolver++, ...",
        "sampling",
        choices=SAMPLE_SAMPLERS,
    )
    sample_at_first: bool = opt(
        False, "Also generate the sample images before the first step, to compare against.", "sampling"
    )
    # --- SD-Train's own (ignored by kohya; they never change training)
    trigger_word: str = opt(
        "",
        "The word that calls up the trained concept, e.g. 'sks' or a character's name. The UI adds it to "
        "captions and the WebUI shows it as the LoRA's activation text; training itself does not read it.",
        "sdtrain",
        common=True,
        kind=PathKind.TEXT,
    )
    preset: str = opt(
        "",
        "The preset this config started from, kept for reference; it does not change training.",
        "sdtrain",
        kind=PathKind.TEXT,
    )
    ignored: dict[str, Any] = field(default_factory=dict)  # kohya keys outside the schema (kohya_keys.py)
    # the keys the config file or command line set (config_from_dict), to tell a default from a chosen value
    given: frozenset[str] = field(default_factory=frozenset, compare=False, repr=False)

    @property
    def is_lora(self) -> bool:
        return self.network_module is not None

    @property
    def unet_learning_rate(self) -> float:
        """unet_lr, else learning_rate: an explicit 0 stays 0 (frozen), as in kohya."""
        return self.learning_rate if self.unet_lr is None else self.unet_lr

    @property
    def text_encoder_learning_rate(self) -> float:
        return self.learning_rate if self.text_encoder_lr is None else self.text_encoder_lr

    @property
    def locon_dim(self) -> int | None:
        """The rank of the convolution LoRA, from conv_dim or network_args (validate() checks they agree)."""
        return parse_network_args(self.network_args).get("conv_dim", self.conv_dim)

    @property
    def locon_alpha(self) -> float | None:
        args = parse_network_args(self.network_args)
        if "conv_dim" in args and "conv_alpha" not in args and self.conv_alpha is None:
            return 1.0  # kohya's networks.lora: conv_alpha defaults to 1 when network_args set conv_dim
        return args.get("conv_alpha", self.conv_alpha)

    @property
    def resolution_size(self) -> tuple[int, int]:
        from lib_sdtrain.prepare.buckets import parse_resolution

        return parse_resolution(self.resolution)


def _network_arg_number(key: str, text: str, kind: type) -> float | int:
    try:
        return kind(text)
    except ValueError:
        expected = "a whole number" if kind is int else "a number"
        raise ConfigError(f"network_args {key}={text}: expected {expected}.") from None


def _network_arg_algo(text: str) -> None:
    if text.lower() not in NETWORK_ARG_ALGOS:
        raise ConfigError(
            f"network_args algo={text} is not implemented: SD-Train trains lora or locon (LoCon: add conv_dim). "
            "Train LoHa, LoKr and the other LyCORIS types with kohya sd-scripts and LyCORIS."
        )


def parse_network_args(entries: list[str]) -> dict[str, Any]:
    """kohya's network_args ("key=value" texts) as {"conv_dim": int, "conv_alpha": float, "rank_dropout": float,
    "module_dropout": float}; ConfigError for what SD-Train cannot honour, so no setting is silently dropped."""
    values: dict[str, Any] = {}
    for entry in entries:
        key, sep, text = str(entry).partition("=")
        key, text = key.strip(), text.strip()
        if not sep:
            raise ConfigError(f'network_args entry {shorten(entry)}: expected key=value, e.g. "conv_dim=8".')
        if key == "conv_dim":
            values[key] = _network_arg_number(key, text, int)
        elif key == "conv_alpha":
            values[key] = _network_arg_number(key, text, float)
        elif key == "algo":
            _network_arg_algo(text)
        elif key in ("rank_dropout", "module_dropout"):
            values[key] = _network_arg_number(key, text, float)
            if not 0 <= values[key] < 1:
                raise ConfigError(f"network_args {key}={text}: expected a number from 0 to below 1.")
        else:
            raise ConfigError(
                f"network_args {key}={text} is not supported by SD-Train (it knows conv_dim, conv_alpha, "
                "rank_dropout, module_dropout and algo=lora|locon); remove it."
            )
    if values.get("conv_dim") is not None and values["conv_dim"] < 1:
        values.pop("conv_dim")  # conv_dim=0: no LoCon, as in kohya
    return values


KNOWN_KEYS = frozenset(f.name for f in dataclasses.fields(TrainConfig) if f.name not in INTERNAL_FIELDS)


def unknown_key_error(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, sorted(KNOWN_KEYS | ACCEPTED_OUTSIDE_SCHEMA), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"Unknown setting {key!r}.{hint}")


def config_values(config: TrainConfig) -> dict[str, Any]:
    """The flat kohya-keyed settings of `config` (accepted-but-unused keys included), e.g. for config_to_toml."""
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in INTERNAL_FIELDS}
    return {**values, **config.ignored}


def flatten_toml(data: dict[str, Any]) -> dict[str, Any]:
    """kohya's rule: each top-level table's keys are lifted to the top level."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            for inner, inner_value in value.items():
                flat[inner] = inner_value
        else:
            flat[key] = value
    return flat


def read_toml(path: str | Path, what: str = "Config file") -> dict[str, Any]:
    """The tables of a TOML file; ConfigError saying what is wrong when it is missing or not TOML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {path.name} is not valid TOML: {e}") from e
