"""What SD-Train does with each kohya key that is not simply one of its options with kohya's meaning: the one table
behind the config checks, the start-of-training notes, the CLI's accepted kohya flags and the README's key table.

A key of the option schema (train/config.py) that is not listed here behaves as in kohya, with kohya's default.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from lib_sdtrain.errors import ConfigError, shorten


class Policy(Enum):
    DEFAULT_DIFFERS = "an option as in kohya, with another default"  # note: kohya's default, as it reads
    SDTRAIN_ONLY = "SD-Train's own option, which kohya does not read"
    HONOURED = "outside the schema (not in the form), read by training"  # note: what it does
    NO_OP = "accepted at any value, changes nothing"  # note: why
    DEFAULT_ONLY = "accepted at the values that change nothing, refused otherwise"  # accepted: those values
    REFUSED = "refused at any value"  # note: why, and what to do instead


@dataclass(frozen=True)
class KohyaKey:
    key: str
    policy: Policy
    note: str = ""
    accepted: tuple = ()  # DEFAULT_ONLY: kohya's (or the kohya_ss GUI's) defaults


KOHYA_KEYS: tuple[KohyaKey, ...] = (
    # Options whose default is not kohya's: the start-of-training summary names them when a config leaves them unset.
    KohyaKey("learning_rate", Policy.DEFAULT_DIFFERS, "2e-06"),
    KohyaKey("save_precision", Policy.DEFAULT_DIFFERS, "fp32"),
    KohyaKey("seed", Policy.DEFAULT_DIFFERS, "a random seed"),
    KohyaKey("cache_latents", Policy.DEFAULT_DIFFERS, "false"),
    KohyaKey("enable_bucket", Policy.DEFAULT_DIFFERS, "false"),
    *(KohyaKey(key, Policy.SDTRAIN_ONLY) for key in ("tokenizer", "conv_dim", "conv_alpha", "trigger_word", "preset")),
    KohyaKey("no_half_vae", Policy.HONOURED, "same behaviour (true keeps the VAE in fp32 under mixed precision)"),
    KohyaKey("xformers", Policy.NO_OP, "speed only: PyTorch's scaled-dot-product attention is used"),
    KohyaKey("mem_eff_attn", Policy.NO_OP, "speed only"),
    KohyaKey("sdpa", Policy.NO_OP, "speed only: always used"),
    KohyaKey("lowram", Policy.NO_OP, "memory only"),
    KohyaKey(
        "persistent_data_loader_workers",
        Policy.NO_OP,
        "speed only: SD-Train's loader threads live for the whole run anyway",
    ),
    KohyaKey("v2", Policy.NO_OP, "SD-Train reads the model version from the checkpoint itself"),
    KohyaKey("epoch", Policy.NO_OP, "the kohya_ss GUI's copy of max_train_epochs, which it also writes"),
    # The kohya_ss GUI's choice of which noise fields it writes; sd-scripts does not read it.
    KohyaKey("noise_offset_type", Policy.DEFAULT_ONLY, accepted=("Original", "Multires")),
    KohyaKey("lr_scheduler_args", Policy.DEFAULT_ONLY, accepted=(None, "", [])),
    KohyaKey("log_with", Policy.DEFAULT_ONLY, "TensorBoard is what logging_dir writes", (None, "", "tensorboard")),
    KohyaKey("masked_loss", Policy.DEFAULT_ONLY, accepted=(False,)),
    KohyaKey("fp8_base", Policy.DEFAULT_ONLY, accepted=(False,)),
    KohyaKey("debug_dataset", Policy.DEFAULT_ONLY, "kohya shows the images and exits: no such mode", (False,)),
    KohyaKey("face_crop_aug_range", Policy.DEFAULT_ONLY, "face-centred crops are not implemented", (None, "")),
    KohyaKey("use_8bit_adam", Policy.REFUSED, 'kohya\'s old spelling; write optimizer_type = "AdamW8bit"'),
    KohyaKey("use_lion_optimizer", Policy.REFUSED, 'kohya\'s old spelling; write optimizer_type = "Lion"'),
    KohyaKey("lr_scheduler_type", Policy.REFUSED, "custom scheduler classes are not supported; use lr_scheduler"),
    KohyaKey("weighted_captions", Policy.REFUSED, "(word:1.2) weights in captions are not implemented"),
    KohyaKey(
        "base_weights", Policy.REFUSED, "merging other LoRAs into the base model before training is not implemented"
    ),
    KohyaKey("deepspeed", Policy.REFUSED, "DeepSpeed is not supported; use accelerate's multi-GPU launch"),
    KohyaKey("huggingface_repo_id", Policy.REFUSED, "uploading to the Hugging Face hub is not implemented"),
    KohyaKey("wandb_api_key", Policy.REFUSED, "only TensorBoard logging (logging_dir) is implemented"),
    KohyaKey(
        "output_config",
        Policy.REFUSED,
        "writing the config is not implemented; each run saves <output_name>.sdtrain.toml instead",
    ),
    KohyaKey("sdxl", Policy.NO_OP, "SD-Train reads the model family (SD 1.x, 2.x, SDXL) from the checkpoint itself"),
)
BY_KEY: dict[str, KohyaKey] = {entry.key: entry for entry in KOHYA_KEYS}

_OUTSIDE_SCHEMA = (Policy.HONOURED, Policy.NO_OP, Policy.DEFAULT_ONLY)
ACCEPTED_OUTSIDE_SCHEMA = frozenset(e.key for e in KOHYA_KEYS if e.policy in _OUTSIDE_SCHEMA)
"""Keys outside the option schema that a config, a preset and the command line accept (into config.ignored)."""
UNUSED_WHEN_GIVEN = frozenset(e.key for e in KOHYA_KEYS if e.policy in (Policy.NO_OP, Policy.DEFAULT_ONLY))
"""Of those, the ones training does not read: named in a warning when a run starts."""
DIFFERING_DEFAULTS: dict[str, str] = {e.key: e.note for e in KOHYA_KEYS if e.policy is Policy.DEFAULT_DIFFERS}
"""{option: kohya's default, as it reads} for the options whose SD-Train default differs."""


def refusal(key: str) -> str | None:
    """Why a key is refused whatever its value (None when it is not)."""
    entry = BY_KEY.get(key)
    return entry.note if entry is not None and entry.policy is Policy.REFUSED else None


def check_accepted_value(key: str, value: Any) -> None:
    """ConfigError when a key accepted only at kohya's defaults has another value."""
    entry = BY_KEY.get(key)
    if entry is None or entry.policy is not Policy.DEFAULT_ONLY:
        return
    if not any(_same_value(value, accepted) for accepted in entry.accepted):
        shown = " or ".join("empty" if a is None else repr(a) for a in entry.accepted)
        raise ConfigError(
            f"{key} = {shorten(value)} is not implemented in SD-Train; only {shown} (kohya's default, which changes "
            "nothing) is accepted. Remove it, or train this config with kohya sd-scripts."
        )


def _same_value(value: Any, accepted: Any) -> bool:
    """kohya reads TOML and command-line text alike: "0" is 0, "L2" is "l2", "" an empty list."""
    if accepted is None or isinstance(accepted, bool):
        return value is accepted or (isinstance(value, str) and value.strip().lower() == str(accepted).lower())
    if isinstance(accepted, int | float):
        try:
            return not isinstance(value, bool) and float(value) == accepted
        except (TypeError, ValueError):
            return False
    if isinstance(accepted, str):
        return isinstance(value, str) and value.strip().lower() == accepted.lower()
    return value == accepted
