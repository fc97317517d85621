"""Loading Stable Diffusion 1.x/2.x into diffusers modules, fully offline.

Sources, in the order they are recognised:
- a single-file checkpoint (`.safetensors`, or `.ckpt` through safe unpickling) in the WebUI/ldm key layout;
- a diffusers model folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/);
- a Hugging Face hub id (from the local cache; downloaded only when the hub is reachable and not disabled);
- an ldm state dict already in memory (the model the WebUI has loaded), through `sd_model_from_ldm`.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from lib_sdtrain.errors import ModelLoadError, UnsupportedModelError
from lib_sdtrain.models import ldm_keys
from lib_sdtrain.models.checkpoint_file import StateDict, detect_sd_version, normalize_ldm_keys, read_checkpoint
from lib_sdtrain.models.configs import (
    SD_VAE_SCALING_FACTOR,
    SDXL_VAE_SCALING_FACTOR,
    infer_sdxl_text2_config,
    infer_text_config,
    infer_unet_config,
    infer_vae_config,
    scheduler_config_from_state_dict,
    unet_layout,
)
from lib_sdtrain.models.sd_model import PredictionType, SDModel, SDVersion

logger = logging.getLogger(__name__)

# Where a lone checkpoint's tokenizer is looked for in the local Hugging Face cache: (repo id, subfolder).
CACHED_TOKENIZERS: dict[str, list[tuple[str, str]]] = {
    "sd1": [("openai/clip-vit-large-patch14", ""), ("runwayml/stable-diffusion-v1-5", "tokenizer")],
    "sd2": [("stabilityai/stable-diffusion-2-1", "tokenizer"), ("stabilityai/stable-diffusion-2", "tokenizer")],
    "sdxl": [("openai/clip-vit-large-patch14", ""), ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer")],
    # SDXL's second tokenizer: CLIP-L's vocabulary, padding with "!" (kohya loads it from this repo)
    "sdxl_2": [
        ("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", ""),
        ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer_2"),
    ],
}
_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")  # `out/x.safetensors` is a missing file, not a hub id
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SCHEDULER_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def load_sd_model(
    source: str | os.PathLike[str],
    *,
    tokenizer: str | os.PathLike[str] | CLIPTokenizer | None = None,
    prediction_type: PredictionType | None = None,
    dtype: torch.dtype = torch.float32,
) -> SDModel:
    """Load a whole SD model from a checkpoint file, a diffusers folder or a hub id (see the module docstring)."""
    path = Path(source)
    if path.is_file():
        return load_single_file(path, tokenizer=tokenizer, prediction_type=prediction_type, dtype=dtype)
    if path.is_dir():
        if not (path / "model_index.json").is_file() and not (path / "unet").is_dir():
            raise ModelLoadError(
                f"{path} is a folder but not a diffusers model (no model_index.json or unet/ inside). "
                "Choose a .safetensors/.ckpt file or a diffusers model folder."
            )
        return load_diffusers(str(path), tokenizer=tokenizer, prediction_type=prediction_type, dtype=dtype)
    if _HUB_ID.match(str(source)) and not str(source).startswith((".", "/")) and path.suffix not in _FILE_SUFFIXES:
        return load_diffusers(str(source), tokenizer=tokenizer, prediction_type=prediction_type, dtype=dtype)
    raise ModelLoadError(f"Model not found: {source} (not a file, not a folder, not a hub id like owner/name)")


# --- single files / ldm state dicts ------------------------------------------------------------------------------


def load_single_file(
    path: str | os.PathLike[str],
    *,
    tokenizer: str | os.PathLike[str] | CLIPTokenizer | None = None,
    prediction_type: PredictionType | None = None,
    dtype: torch.dtype = torch.float32,
) -> SDModel:
    checkpoint = read_checkpoint(path)
    path = Path(path)
    sidecar = read_ldm_yaml(path.with_suffix(".yaml"))
    prediction_type = (
        prediction_type or sidecar.get("prediction_type") or _metadata_prediction_type(checkpoint.metadata)
    )
    return sd_model_from_ldm(
        checkpoint.state_dict,
        tokenizer=tokenizer,
        prediction_type=prediction_type,
        dtype=dtype,
        source=str(path),
        vae_scaling_factor=sidecar.get("scale_factor"),
        scheduler_config=sidecar.get("scheduler", {}),
        tokenizer_search_dir=path.parent,
    )


def sd_model_from_ldm(
    state_dict: StateDict,
    *,
    tokenizer: str | os.PathLike[str] | CLIPTokenizer | None = None,
    prediction_type: PredictionType | None = None,
    dtype: torch.dtype = torch.float32,
    source: str = "",
    tokenizer_2: CLIPTokenizer | None = None,
    vae_scaling_factor: float | None = None,
    scheduler_config: dict[str, Any] | None = None,
    tokenizer_search_dir: Path | None = None,
) -> SDModel:
    """Build an SDModel from an ldm-layout state dict. Tensors that no module takes are kept in `extra_ldm_state`."""
    state_dict = normalize_ldm_keys(state_dict)
    name = Path(source).name or "checkpoint"
    version: SDVersion = detect_sd_version(state_dict, name)  # type: ignore[assignment]
    consumed: set[str] = set()

    text_tokenizer = resolve_tokenizer(tokenizer, version, tokenizer_search_dir)
    text_config = infer_text_config(state_dict, version, _token_ids(text_tokenizer))
    _check_vocab(text_tokenizer, text_config.vocab_size)
    text_encoder = _build(CLIPTextModel, text_config)
    ref = ldm_keys.TEXT_LDM_REFS[version]
    _load_component(
        text_encoder, state_dict, lambda k: None if k == ldm_keys.POSITION_IDS_KEY else ref(k), consumed, dtype
    )
    text_encoder_2, tokenizer_2 = None, None
    if version == "sdxl":
        tokenizer_2 = tokenizer_2 or resolve_second_tokenizer(tokenizer, text_tokenizer, tokenizer_search_dir)
        text2_config = infer_sdxl_text2_config(state_dict, _token_ids(tokenizer_2))
        text_encoder_2 = _build(CLIPTextModelWithProjection, text2_config)
        _load_component(text_encoder_2, state_dict, ldm_keys.sdxl_text2_ldm_ref, consumed, dtype)

    default_scale = SDXL_VAE_SCALING_FACTOR if version == "sdxl" else SD_VAE_SCALING_FACTOR
    vae_config = infer_vae_config(state_dict, vae_scaling_factor or default_scale)
    vae = _build(AutoencoderKL, vae_config)
    levels = len(vae_config["block_out_channels"])
    _load_component(vae, state_dict, lambda k: ldm_keys.vae_ldm_ref(k, levels), consumed, dtype)

    # The UNet config does not depend on the prediction type except for its default sample size.
    unet_config = infer_unet_config(state_dict, version, v_prediction=prediction_type == "v_prediction")
    unet = _build(UNet2DConditionModel, unet_config)
    layout = unet_layout(unet_config)
    _load_component(unet, state_dict, lambda k: ldm_keys.unet_ldm_ref(k, layout), consumed, dtype)

    if prediction_type is None and version == "sdxl":
        prediction_type = "v_prediction" if "v_pred" in state_dict else "epsilon"  # NoobAI's marker key
    if prediction_type is None:
        prediction_type = "v_prediction" if version == "sd2" and probe_v_prediction(unet) else "epsilon"
        logger.info("%s: no prediction type given; using %s", name, prediction_type)

    return SDModel(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=text_tokenizer,
        version=version,
        prediction_type=prediction_type,
        source=source,
        scheduler_config={**scheduler_config_from_state_dict(state_dict), **(scheduler_config or {})},
        extra_ldm_state={k: v for k, v in state_dict.items() if k not in consumed},
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )


def _build(cls: Any, config: Any) -> Any:
    """Instantiate without allocating weights: the checkpoint's tensors are assigned directly afterwards."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        return cls(config) if not isinstance(config, dict) else cls(**config)


def _load_component(
    module: torch.nn.Module, state_dict: StateDict, ref_of, consumed: set[str], dtype: torch.dtype
) -> None:
    tensors: dict[str, torch.Tensor] = {}
    missing, mismatched = [], []
    for key, expected in module.state_dict().items():
        ref = ref_of(key)
        if ref is None:
            continue
        tensor = state_dict.get(ref.key)
        if tensor is None:
            missing.append(ref.key)
            continue
        consumed.add(ref.key)
        if ref.chunks > 1:
            tensor = tensor.chunk(ref.chunks, dim=0)[ref.chunk]
        if ref.conv1x1 and tensor.ndim == 4:
            tensor = tensor[:, :, 0, 0]
        if ref.transpose:
            tensor = tensor.T
        if tensor.shape != expected.shape:
            mismatched.append(f"{ref.key} {tuple(tensor.shape)} (expected {tuple(expected.shape)})")
            continue
        tensors[key] = (tensor.to(dtype) if tensor.is_floating_point() else tensor).contiguous()
    kind = type(module).__name__
    if missing:
        raise ModelLoadError(f"Checkpoint is incomplete: {kind} lacks {len(missing)} tensors, e.g. {missing[:3]}")
    if mismatched:
        raise ModelLoadError(
            f"Checkpoint does not fit the {kind} layout: {len(mismatched)} tensors, e.g. {mismatched[:2]}"
        )
    module.load_state_dict(tensors, strict=False, assign=True)
    module.eval()


@torch.no_grad()
def probe_v_prediction(unet: UNet2DConditionModel) -> bool:
    """Whether an SD2 UNet was trained for v-prediction, by the WebUI's test (modules/sd_models_config.py,
    is_using_v_parameterization_for_sd2): at t=999 on a constant input, a v-model's output minus the input
    averages below -1, an epsilon-model's does not. Only meaningful for real trained weights."""
    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5)
    context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5)
    out = unet(x.to(unet.dtype), torch.tensor([999]), encoder_hidden_states=context.to(unet.dtype)).sample
    return float((out.float() - x).mean()) < -1


def _metadata_prediction_type(metadata: dict[str, str]) -> PredictionType | None:
    value = metadata.get("modelspec.prediction_type", "").lower()
    if value in ("v", "v_prediction"):
        return "v_prediction"
    if value == "epsilon":
        return "epsilon"
    return None


def read_ldm_yaml(path: Path) -> dict[str, Any]:
    """What an original-config .yaml beside a checkpoint says about prediction type, VAE scale and noise schedule."""
    if not path.is_file():
        return {}
    import yaml

    try:
        params = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("model", {}).get("params", {})
    except (yaml.YAMLError, UnicodeDecodeError, AttributeError) as e:
        raise ModelLoadError(f"Could not read the model config {path.name}: {e}") from e
    found: dict[str, Any] = {
        "prediction_type": "v_prediction" if params.get("parameterization") == "v" else "epsilon",
    }
    if "scale_factor" in params:
        found["scale_factor"] = float(params["scale_factor"])
    schedule = {}
    if "linear_start" in params and "linear_end" in params:
        schedule = {"beta_start": float(params["linear_start"]), "beta_end": float(params["linear_end"])}
    if "timesteps" in params:
        schedule["num_train_timesteps"] = int(params["timesteps"])
    if schedule:
        found["scheduler"] = schedule
    return found


# --- tokenizers ----------------------------------------------------------------------------------------------------


def resolve_tokenizer(
    spec: str | os.PathLike[str] | CLIPTokenizer | None, version: str, search_dir: Path | None = None
) -> CLIPTokenizer:
    """The tokenizer named by `spec` (an object, a folder or a hub id), else one found beside the checkpoint or in
    the local Hugging Face cache; a clear error saying what to provide otherwise."""
    if isinstance(spec, CLIPTokenizer):
        return spec
    if spec is not None:
        return _tokenizer_from(str(spec), local_only=hub_offline() or Path(spec).exists())
    if search_dir is not None and (search_dir / "tokenizer" / "vocab.json").is_file():
        return _tokenizer_from(str(search_dir / "tokenizer"), local_only=True)
    for repo_id, subfolder in CACHED_TOKENIZERS.get(version, []):
        try:
            return CLIPTokenizer.from_pretrained(repo_id, subfolder=subfolder, local_files_only=True)
        except (OSError, ValueError):
            continue
    wanted = CACHED_TOKENIZERS[version][0][0]
    raise ModelLoadError(
        "No CLIP tokenizer found for this checkpoint (single files do not contain one). Give a tokenizer folder "
        "(with vocab.json and merges.txt, e.g. the tokenizer/ folder of a diffusers SD model) or a diffusers model "
        f"folder, or put {wanted} in the local Hugging Face cache (huggingface-cli download {wanted})."
    )


def resolve_second_tokenizer(
    spec: str | os.PathLike[str] | CLIPTokenizer | None, first: CLIPTokenizer, search_dir: Path | None = None
) -> CLIPTokenizer:
    """SDXL's second tokenizer: a `tokenizer_2` folder in `spec` (a diffusers SDXL folder) or beside the checkpoint,
    else the local Hugging Face cache's, else the first tokenizer padding with "!" as the second one does (the two
    share CLIP-L's vocabulary)."""
    for folder in (Path(spec) if isinstance(spec, str | os.PathLike) else None, search_dir):
        if folder is not None and (folder / "tokenizer_2" / "vocab.json").is_file():
            return CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer_2", local_files_only=True)
    for repo_id, subfolder in CACHED_TOKENIZERS["sdxl_2"]:
        try:
            return CLIPTokenizer.from_pretrained(repo_id, subfolder=subfolder, local_files_only=True)
        except (OSError, ValueError):
            continue
    second = copy.deepcopy(first)
    if "!" in second.get_vocab():
        second.pad_token = "!"
    return second


def _tokenizer_from(spec: str, local_only: bool) -> CLIPTokenizer:
    path = Path(spec)
    subfolder = "tokenizer" if (path / "tokenizer" / "vocab.json").is_file() else ""
    try:
        tokenizer = CLIPTokenizer.from_pretrained(spec, subfolder=subfolder, local_files_only=local_only)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"Could not load a CLIP tokenizer from {spec}: {e}") from e
    return tokenizer


def _token_ids(tokenizer: CLIPTokenizer) -> dict[str, int]:
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    }


def _check_vocab(tokenizer: CLIPTokenizer, vocab_size: int) -> None:
    if len(tokenizer) > vocab_size:
        raise ModelLoadError(
            f"The tokenizer has {len(tokenizer)} tokens but the text encoder only {vocab_size}: "
            "they do not belong together. Give the tokenizer that came with this model."
        )


# --- diffusers folders and hub ids -------------------------------------------------------------------------------


def _from_pretrained(cls: Any, source: str, subfolder: str, kwargs: dict[str, Any]) -> Any:
    """`cls.from_pretrained` (cls: a diffusers or transformers class), except for a local folder holding only pickled
    weights (.bin): those are read here, by the one safe reader, since diffusers' and transformers' readers call
    torch.load, which inside the WebUI is a checker that refuses every file current torch writes."""
    from lib_sdtrain.utils.torch_pickle import load_tensor_dict, pickled_weights

    weights = pickled_weights(Path(source) / subfolder)
    if weights is None:
        return cls.from_pretrained(source, subfolder=subfolder, **kwargs)
    state = load_tensor_dict(weights)
    if cls is CLIPTextModel:  # transformers takes the weights as an argument
        return cls.from_pretrained(source, subfolder=subfolder, state_dict=state, **kwargs)
    model = cls.from_config(cls.load_config(str(Path(source) / subfolder)))
    model.load_state_dict(state)
    return model.to(kwargs["torch_dtype"])


def load_diffusers(
    source: str,
    *,
    tokenizer: str | os.PathLike[str] | CLIPTokenizer | None = None,
    prediction_type: PredictionType | None = None,
    dtype: torch.dtype = torch.float32,
) -> SDModel:
    local_only = hub_offline() or Path(source).is_dir()
    _refuse_other_families(source, _diffusers_pipeline_class(source, local_only))
    kwargs = {"torch_dtype": dtype, "local_files_only": local_only}
    try:
        unet = _from_pretrained(UNet2DConditionModel, source, "unet", kwargs)
        vae = _from_pretrained(AutoencoderKL, source, "vae", kwargs)
        text_encoder = _from_pretrained(CLIPTextModel, source, "text_encoder", kwargs)
        scheduler = _read_scheduler_config(source, local_only)
    except (OSError, ValueError) as e:
        where = "the local Hugging Face cache (the hub is offline)" if local_only else "the Hugging Face hub"
        hint = "" if Path(source).is_dir() else f" It was looked up in {where}."
        raise ModelLoadError(f"Could not load the diffusers model {source}: {e}.{hint}") from e
    sdxl = getattr(unet.config, "addition_embed_type", None) == "text_time"  # SDXL's size and crop conditioning
    if tokenizer is None:
        tokenizer = source
    text_tokenizer = tokenizer if isinstance(tokenizer, CLIPTokenizer) else _tokenizer_from(str(tokenizer), local_only)
    _check_vocab(text_tokenizer, text_encoder.config.vocab_size)
    text_encoder_2, tokenizer_2 = None, None
    if sdxl:
        try:
            text_encoder_2 = _from_pretrained(CLIPTextModelWithProjection, source, "text_encoder_2", kwargs)
            tokenizer_2 = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2", local_files_only=local_only)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{source} is an SDXL model without its second text encoder or tokenizer: {e}") from e
    return SDModel(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=text_tokenizer,
        # SD2's UNets use linear projections in their transformers; SD1's use 1x1 convolutions.
        version="sdxl" if sdxl else "sd2" if unet.config.use_linear_projection else "sd1",
        prediction_type=prediction_type or scheduler.get("prediction_type", "epsilon"),
        source=source,
        scheduler_config={k: scheduler[k] for k in _SCHEDULER_KEYS if k in scheduler},
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )


# diffusers pipeline classes (model_index.json's _class_name) of the families SD-Train does not train, by name.
OTHER_FAMILIES = {
    "StableDiffusion3": ("an SD3 model", "SD3 is not supported"),
    "Flux": ("a Flux model", "Flux is not supported"),
}


def _diffusers_pipeline_class(source: str, local_only: bool) -> str:
    """model_index.json's _class_name ("StableDiffusionPipeline", ...), or "" when it cannot be read here (the
    weights are then loaded and checked as they are)."""
    import json

    try:
        if Path(source).is_dir():
            index = Path(source) / "model_index.json"
        else:
            from huggingface_hub import hf_hub_download

            index = Path(hf_hub_download(source, "model_index.json", local_files_only=local_only))
        return str(json.loads(index.read_text(encoding="utf-8")).get("_class_name", ""))
    except Exception:  # no index, offline, not JSON: nothing known yet
        return ""


def _refuse_other_families(source: str, pipeline_class: str) -> None:
    for prefix, (what, verdict) in OTHER_FAMILIES.items():
        if pipeline_class.startswith(prefix):
            raise UnsupportedModelError(
                f"{source} is {what} (a diffusers {pipeline_class}). SD-Train works with SD 1.x, 2.x and SDXL; "
                f"{verdict}."
            )


def _read_scheduler_config(source: str, local_only: bool) -> dict[str, Any]:
    from diffusers import DDPMScheduler

    try:
        return dict(DDPMScheduler.load_config(source, subfolder="scheduler", local_files_only=local_only))
    except (OSError, ValueError):
        return {}


def load_vae(source: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> AutoencoderKL:
    """Only the VAE: from a whole checkpoint, a standalone VAE file (keys without `first_stage_model.`), a diffusers
    model or VAE folder, or a hub id. Used for latent caching, where loading the UNet would waste memory."""
    path = Path(source)
    if path.is_file():
        state_dict = read_checkpoint(path).state_dict
        if not any(k.startswith(ldm_keys.VAE_PREFIX) for k in state_dict):
            state_dict = {ldm_keys.VAE_PREFIX + k: v for k, v in state_dict.items()}
        sdxl = any(k.startswith("conditioner.embedders.") for k in state_dict)
        default_scale = SDXL_VAE_SCALING_FACTOR if sdxl else SD_VAE_SCALING_FACTOR
        scale = read_ldm_yaml(path.with_suffix(".yaml")).get("scale_factor", default_scale)
        config = infer_vae_config(state_dict, scale)
        vae = _build(AutoencoderKL, config)
        levels = len(config["block_out_channels"])
        _load_component(vae, state_dict, lambda k: ldm_keys.vae_ldm_ref(k, levels), set(), dtype)
        return vae
    local_only = hub_offline() or path.is_dir()
    subfolder = "" if (path / "config.json").is_file() else "vae"
    try:
        return AutoencoderKL.from_pretrained(
            str(source), subfolder=subfolder, torch_dtype=dtype, local_files_only=local_only
        )
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"Could not load a VAE from {source}: {e}") from e
