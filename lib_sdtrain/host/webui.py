"""The one place where SD-Train reaches into the AUTOMATIC1111 WebUI (v1.10.x; older versions through the shims at
the end). Every `modules` import is inside a function, so importing this file outside the WebUI costs nothing.

Each function names the WebUI source it relies on. lib_sdtrain/host/standalone.py has the same functions for
running outside the WebUI; lib_sdtrain.host.current() picks one.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from lib_sdtrain.errors import SDTrainError, UnsupportedModelError
from lib_sdtrain.host import settings
from lib_sdtrain.host.auth import basic_auth_dependencies
from lib_sdtrain.host.types import GpuBusyError, LoadedCheckpoint, LoadedWeights, ModelVersion
from lib_sdtrain.utils.files import resolve_allowed
from lib_sdtrain.utils.progress import CallbackProgress

logger = logging.getLogger(__name__)

NAME = "webui"


# --- where we are --------------------------------------------------------------------------------------------------


def is_webui() -> bool:
    """True inside a running WebUI. Looks at sys.modules only: importing `modules.shared` outside the WebUI would
    parse the command line as the WebUI's. `modules` is a common package name, hence the attribute checks."""
    shared = sys.modules.get("modules.shared")
    return shared is not None and hasattr(shared, "cmd_opts") and hasattr(shared, "state")


# --- the loaded model ----------------------------------------------------------------------------------------------


def loaded_checkpoint() -> LoadedCheckpoint | None:
    """The checkpoint the WebUI has loaded, or None. Never starts a load.

    modules/sd_models.py: model_data.sd_model (`shared.sd_model` would load one on first access), its
    `sd_checkpoint_info` (CheckpointInfo: filename, name, title, hash, sha256, shorthash, is_safetensors) and the
    type flags set by set_model_type() (is_sd1/is_sd2/is_sdxl/is_sd3).
    """
    model = _current_sd_model()
    if model is None:
        return None
    info = getattr(model, "sd_checkpoint_info", None)
    if info is None:
        return None
    return LoadedCheckpoint(
        path=Path(info.filename),
        name=info.name,
        title=getattr(info, "title", info.name),
        hash=getattr(info, "shorthash", None) or getattr(info, "hash", None),
        sha256=getattr(info, "sha256", None),
        version=_model_version(model),
        prediction_type="v_prediction" if getattr(model, "parameterization", "eps") == "v" else "epsilon",
        legacy_hash=getattr(info, "hash", None),
    )


def loaded_model_problem() -> str | None:
    """Why the loaded checkpoint cannot be trained from, or None when it can: checked before a job starts, so the
    form says so at once. None loaded yet (the WebUI loads its model in the background at start-up); --lowvram/
    --medvram (modules/lowvram.py: the model lives split between RAM and VRAM, moved piece by piece by forward
    hooks, on a GPU too small for training beside it; the WebUI's own training refuses --lowvram); SDXL/SD3."""
    from modules import shared

    checkpoint = loaded_checkpoint()
    if checkpoint is None:
        return "No checkpoint is loaded in the WebUI yet. Load one (the list at the top), or choose a model file."
    flag = next((f for f in ("lowvram", "medvram") if getattr(shared.cmd_opts, f, False)), None)
    if flag is not None:
        return (
            f"The WebUI runs with --{flag}, which keeps its model split between RAM and VRAM: SD-Train cannot "
            f"train from it. Choose the checkpoint's file instead ({checkpoint.path}), or restart the WebUI "
            f"without --{flag}."
        )
    if checkpoint.version == "sd3":
        return _unsupported_version_message(checkpoint)
    return None


def _unsupported_version_message(checkpoint: LoadedCheckpoint) -> str:
    return (
        f"The WebUI's loaded model {checkpoint.name} is {checkpoint.version.upper()}; SD-Train trains SD 1.x, 2.x "
        "and SDXL models. Load one of those in the WebUI, or choose a model file."
    )


def loaded_model_ldm_state_dict() -> LoadedWeights | None:
    """The loaded model's weights as a clean ldm-layout state dict on the CPU, plus its tokenizer, or None when no
    model is loaded. The WebUI's model is not changed.

    "Clean" means without the user's last-used LoRAs. The built-in Lora extension (extensions-builtin/Lora/
    networks.py, network_apply_weights) merges active LoRAs into the weights in place and keeps the originals in
    each layer's `network_weights_backup`/`network_bias_backup` while `network_current_names` is non-empty;
    `load_networks([])` alone restores nothing until each layer runs again. So the backups replace the live
    tensors of those layers. The WebUI's hijack wrappers (modules/sd_hijack.py: FrozenCLIPEmbedderWithCustomWords
    and EmbeddingsWithFixes, both holding the original as `.wrapped`) are removed from the key names.

    The weights are what the WebUI runs (usually float16, VAE per --no-half-vae; the VAE is the one selected in the
    WebUI, which may be a separate VAE file rather than the checkpoint's); the noise-schedule buffers come
    from the file (see _schedule_buffers_from_file). When the weights cannot be trusted
    (fp8 storage: lossy; parts on the meta device), the checkpoint file is read instead, with SD-Train's safe
    reader (the WebUI's read_state_dict would unpickle .ckpt files without weights_only).
    """
    model = _current_sd_model()
    checkpoint = loaded_checkpoint()
    if model is None or checkpoint is None:
        return None
    if checkpoint.version == "sd3":
        raise UnsupportedModelError(_unsupported_version_message(checkpoint))
    live = None if _uses_fp8() else _live_state_dict(model)
    from_file = live is None
    state_dict: Mapping[str, torch.Tensor]
    if live is None:
        from lib_sdtrain.models.checkpoint_file import read_checkpoint

        state_dict = read_checkpoint(checkpoint.path).state_dict
    else:
        state_dict = {k: v for k, v in live.items() if "." in k} | _schedule_buffers_from_file(checkpoint.path)
    tokenizer = _tokenizer_of(model)
    tokenizer_2 = _openclip_tokenizer_as_clip() if checkpoint.version == "sdxl" else None
    return LoadedWeights(state_dict=state_dict, tokenizer=tokenizer, checkpoint=checkpoint, from_file=from_file,
                         tokenizer_2=tokenizer_2)  # fmt: skip


def _schedule_buffers_from_file(path: Path) -> dict[str, torch.Tensor]:
    """The noise-schedule buffers at the state dict's root (betas, alphas_cumprod, ...) as the checkpoint file has
    them. The live ones are not the file's: model.half() rounded them, and the WebUI rewrites alphas_cumprod for
    its sampler options (sd_models.apply_alpha_schedule_override). Read from a .safetensors header cheaply; for
    other files they are left out and SD's standard schedule applies."""
    if path.suffix.lower() != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys() if "." not in key}  # noqa: SIM118 (not a dict)
    except (OSError, RuntimeError, ValueError) as e:
        logger.warning("SD-Train: could not read the noise schedule from %s (%s); using SD's standard one", path, e)
        return {}


_HIJACK_WRAPPER = re.compile(r"\.wrapped(?=\.)")


def _live_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """CPU copies of the model's tensors with LoRA merges undone; None if any tensor is on the meta device."""
    live = model.state_dict()
    if any(t.is_meta for t in live.values()):
        return None
    for name, module in model.named_modules():
        if not getattr(module, "network_current_names", ()):
            continue
        for field, original in _lora_backups(module).items():
            key = f"{name}.{field}" if name else field
            if original is None:
                live.pop(key, None)  # the layer had no bias; the LoRA added one
            else:
                live[key] = original
    return {_HIJACK_WRAPPER.sub("", key): tensor.detach().to("cpu", copy=True) for key, tensor in live.items()}


def _lora_backups(module: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    """{state-dict field: original tensor} for a layer the Lora extension has merged into (networks.py,
    network_restore_weights_from_backup: MultiheadAttention keeps (in_proj_weight, out_proj.weight))."""
    weights = getattr(module, "network_weights_backup", None)
    bias = getattr(module, "network_bias_backup", None)
    found: dict[str, torch.Tensor | None] = {}
    if isinstance(module, torch.nn.MultiheadAttention):
        if weights is not None:
            found["in_proj_weight"], found["out_proj.weight"] = weights
        found["out_proj.bias"] = bias
    else:
        if weights is not None:
            found["weight"] = weights
        found["bias"] = bias
    return found


def _tokenizer_of(model: Any) -> Any:
    """SD1: the model's transformers CLIPTokenizer (cond_stage_model[.wrapped].tokenizer, modules/sd_hijack_clip.py).
    SDXL: its first embedder's (conditioner.embedders[0][.wrapped].tokenizer). SD2: the WebUI tokenizes with
    open_clip's (see _openclip_tokenizer_as_clip). None when neither is there; the loader then looks for a
    tokenizer itself."""
    from transformers import PreTrainedTokenizerBase

    cond = getattr(model, "cond_stage_model", None)
    embedders = getattr(getattr(model, "conditioner", None), "embedders", None)
    if _model_version(model) == "sdxl" and isinstance(embedders, torch.nn.Module):
        cond = next(iter(embedders.children()), None)  # the first embedder (a ModuleList in sgm)
    tokenizer = getattr(getattr(cond, "wrapped", cond), "tokenizer", None)
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    return _openclip_tokenizer_as_clip() if _model_version(model) == "sd2" else None


def _openclip_tokenizer_as_clip() -> Any:
    """open_clip's SimpleTokenizer (open_clip.tokenizer._tokenizer, used by ldm's FrozenOpenCLIPEmbedder and
    modules/sd_hijack_open_clip.py) rebuilt as the transformers CLIPTokenizer that SD2's diffusers models ship:
    the same BPE vocabulary and merges, "!" (id 0, open_clip's padding) as the pad token. Offline: open_clip
    carries its vocabulary file."""
    try:
        from open_clip import tokenizer as open_clip_tokenizer
    except Exception:
        return None
    simple = getattr(open_clip_tokenizer, "_tokenizer", None)
    encoder, ranks = getattr(simple, "encoder", None), getattr(simple, "bpe_ranks", None)
    if not encoder or not ranks:
        return None
    import json
    import tempfile

    from transformers import CLIPTokenizer

    specials = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {specials.get(token, token): index for token, index in encoder.items()}
    merges = [" ".join(pair) for pair, _ in sorted(ranks.items(), key=lambda item: item[1])]
    with tempfile.TemporaryDirectory(prefix="sdtrain-openclip-") as tmp:
        vocab_file, merges_file = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab_file.write_text(json.dumps(vocab), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        return CLIPTokenizer(str(vocab_file), str(merges_file), pad_token="!", model_max_length=77)


def load_webui_model(dtype: torch.dtype = torch.float32):
    """The WebUI's loaded model as an SDModel for training, built from its weights in memory; None if none loaded.
    It carries the checkpoint's WebUI name and hashes, which the trained LoRA's metadata names as its base."""
    weights = loaded_model_ldm_state_dict()
    if weights is None:
        return None
    from lib_sdtrain.models.loading import sd_model_from_ldm

    checkpoint = weights.checkpoint
    model = sd_model_from_ldm(
        weights.state_dict,
        tokenizer=weights.tokenizer,
        tokenizer_2=weights.tokenizer_2,
        prediction_type=checkpoint.prediction_type,
        dtype=dtype,
        source=str(checkpoint.path),
        tokenizer_search_dir=checkpoint.path.parent,
    )
    model.source_name = checkpoint.name
    model.source_hash = checkpoint.legacy_hash or ""
    model.source_sha256 = checkpoint.sha256 or ""
    return model


# --- devices and memory --------------------------------------------------------------------------------------------


def device() -> torch.device:
    """modules/devices.py: `device` (set at startup by shared_init.py; get_optimal_device() before that)."""
    from modules import devices

    return torch.device(devices.device) if devices.device is not None else devices.get_optimal_device()


def dtype() -> torch.dtype:
    """modules/devices.py: `dtype`, the WebUI's inference dtype (float16 unless --no-half)."""
    from modules import devices

    return devices.dtype


def option(key: str, default: Any = None) -> Any:
    """A WebUI setting (modules/options.py: opts.data, then the registered default, then SD-Train's own default from
    host/settings.py, then `default`)."""
    from modules import shared

    if key in shared.opts.data:
        return shared.opts.data[key]
    info = shared.opts.data_labels.get(key)
    return info.default if info is not None else settings.default(key, default)


@contextlib.contextmanager
def free_vram_for_training(unload: bool | None = None) -> Iterator[None]:
    """Give the GPU to training, and give it back afterwards even when training fails.

    As the WebUI's own training does (modules/textual_inversion/textual_inversion.py): parallel processing off
    (`shared.parallel_processing_allowed`, which also stops live previews of generations), and the model moved
    off the GPU: sd_models.unload_model_weights() (v1.10: send_model_to_cpu(), lowvram-aware, then torch_gc()).
    On the way out it goes back with sd_models.send_model_to_device() (what POST /sdapi/v1/reload-checkpoint
    does). `unload` defaults to the setting `sdtrain_unload_model` (on). Call it while holding gpu_lock().
    """
    from modules import devices, shared

    if unload is None:
        unload = bool(option("sdtrain_unload_model"))
    previous_parallel = shared.parallel_processing_allowed
    shared.parallel_processing_allowed = False
    model = _current_sd_model() if unload else None
    try:
        if model is not None:
            _send_model_to_cpu(model)
        devices.torch_gc()
        yield
    finally:
        shared.parallel_processing_allowed = previous_parallel
        if model is not None:
            try:
                _send_model_back(model)
            except Exception:  # never hide the training's own error; the user can reload the checkpoint
                logger.exception("SD-Train: could not move the WebUI's model back to the GPU; reload the checkpoint")
        devices.torch_gc()


@contextlib.contextmanager
def gpu_lock(wait: bool = True, task_id: str | None = None) -> Iterator[None]:
    """Hold the WebUI's generation lock (modules/call_queue.py: queue_lock, a FIFOLock taken by
    wrap_gradio_gpu_call and the API's txt2img/img2img), so training and generation never run together.

    Not re-entrant: do not call this from a function already wrapped in wrap_gradio_gpu_call. With `wait=False`
    a busy lock raises GpuBusyError instead of queueing. `task_id` ("task(...)" from the page's randomId()) is
    queued in modules/progress.py first, so the browser's progress bar shows "waiting" meanwhile.
    """
    from modules import call_queue

    if task_id and wait:  # without waiting there is no queue to show
        from modules import progress

        progress.add_task_to_queue(task_id)
    lock = call_queue.queue_lock
    if not lock.acquire(blocking=wait):
        raise GpuBusyError("The WebUI is busy generating. Try again when it has finished.")
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def job(name: str, task_id: str | None = None) -> Iterator[None]:
    """One WebUI job: shared.state.begin(job=...)/end() (modules/shared_state.py), and the task started and finished
    in modules/progress.py, so /internal/progress and the Interrupt button work for it. Inside gpu_lock()."""
    from modules import shared

    tasks: Any = None  # modules/progress.py, when the job has a task id
    if task_id:
        from modules import progress

        tasks = progress
        tasks.start_task(task_id)
    shared.state.begin(job=name)
    try:
        yield
    finally:
        shared.state.end()
        if tasks is not None:
            tasks.finish_task(task_id)


class WebUIProgress(CallbackProgress):
    """A Progress that also drives the WebUI's job state (modules/shared_state.py): job_no/job_count for the
    progress bar and ETA of /internal/progress, textinfo for its text, assign_current_image() for the live
    preview; the Interrupt button (state.interrupted) cancels the job at its next safe point."""

    def __init__(self, callback: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        super().__init__(callback)
        from modules import shared

        self._state = shared.state

    def on_start(self) -> None:
        self._state.job_count = max(int(self.state.total), 0)
        self._state.job_no = 0
        self._state.textinfo = self.state.desc or None
        super().on_start()

    def on_advance(self, n: int, info: dict[str, Any]) -> None:
        done = self.state.done
        self._state.job_no = min(done, self._state.job_count) if self._state.job_count > 0 else done
        details = ", ".join(f"{k} {_short(v)}" for k, v in info.items())
        self._state.textinfo = f"{self.state.desc} {done}/{self.state.total}" + (f": {details}" if details else "")
        super().on_advance(n, info)

    def on_message(self, text: str) -> None:
        self._state.textinfo = text
        super().on_message(text)

    def on_image(self, image: Any, caption: str, path: Any = None) -> None:
        if hasattr(image, "mode") and option("sdtrain_live_preview"):
            self._state.assign_current_image(image)
        super().on_image(image, caption, path)

    @property
    def cancelled(self) -> bool:
        return self._state.interrupted or super().cancelled

    def check_cancelled(self) -> None:
        if self._state.interrupted:
            self.cancel()
        super().check_cancelled()


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def make_progress(callback: Callable[[str, dict[str, Any]], None] | None = None) -> WebUIProgress:
    return WebUIProgress(callback)


# --- folders, the WebUI's lists --------------------------------------------------------------------------------------


def lora_dir() -> Path:
    """shared.cmd_opts.lora_dir (added by extensions-builtin/Lora/preload.py, default models/Lora)."""
    from modules import paths, shared

    return Path(getattr(shared.cmd_opts, "lora_dir", None) or Path(paths.models_path) / "Lora")


def checkpoints_dir() -> Path:
    """--ckpt-dir, else sd_models.model_path (models/Stable-diffusion)."""
    from modules import sd_models, shared

    return Path(shared.cmd_opts.ckpt_dir or sd_models.model_path)


def dataset_dir() -> Path:
    """--sdtrain-dataset-dir (preload.py), else <data dir>/sd-train/datasets."""
    from modules import paths

    return _sdtrain_dir("sdtrain_dataset_dir", Path(paths.data_path) / "sd-train" / "datasets")


def output_dir() -> Path:
    """--sdtrain-output-dir (preload.py), else <data dir>/outputs/sd-train."""
    from modules import paths

    return _sdtrain_dir("sdtrain_output_dir", Path(paths.data_path) / "outputs" / "sd-train")


def models_dir() -> Path:
    """--sdtrain-models-dir (preload.py), else <models dir>/sd-train."""
    from modules import paths

    return _sdtrain_dir("sdtrain_models_dir", Path(paths.models_path) / "sd-train")


def _sdtrain_dir(option_name: str, default: Path) -> Path:
    from modules import shared

    value = getattr(shared.cmd_opts, option_name, None)
    return Path(value).expanduser() if value else default


def base_model_choices() -> list[str]:
    """The loaded checkpoint first (the default), then the WebUI's checkpoint list (modules/sd_models.py:
    checkpoints_list, CheckpointInfo.filename), then diffusers folders in SD-Train's models folder."""
    from modules import sd_models

    from lib_sdtrain.host.types import LOADED_CHECKPOINT
    from lib_sdtrain.models.discovery import sd_models as find_models

    files = [info.filename for info in sd_models.checkpoints_list.values()]
    return [LOADED_CHECKPOINT, *files, *(str(p) for p in find_models([models_dir()]))]


def refresh_loras() -> bool:
    """Rescan the Lora folder (extensions-builtin/Lora/networks.py: list_available_networks(), what
    POST /sdapi/v1/refresh-loras does). False if the built-in Lora extension is not loaded. The cards in the
    browser are refreshed by sdtrainRefreshLoraCards() (javascript/sdtrain.js)."""
    refresh = _lora_refresh_function()
    if refresh is None:
        return False
    refresh()
    return True


def refresh_checkpoints() -> bool:
    """Rescan the checkpoint folders (modules/sd_models.py: list_models(), what POST /sdapi/v1/refresh-checkpoints
    does; the API holds queue_lock meanwhile, so call this inside gpu_lock())."""
    from modules import sd_models

    sd_models.list_models()
    return True


# --- who may do what -----------------------------------------------------------------------------------------------


def file_access_allowed() -> bool:
    """Whether the tab may read and write any folder the user types. The WebUI sets
    cmd_opts.disable_extension_access (modules/shared_cmd_options.py) when the UI is reachable from other machines
    (--share, --listen, --ngrok, --server-name) unless --enable-insecure-extension-access."""
    from modules import shared

    return not getattr(shared.cmd_opts, "disable_extension_access", False)


def allowed_roots() -> list[Path]:
    """The folders SD-Train may always use: its own, the Lora and checkpoint folders."""
    return [dataset_dir(), output_dir(), models_dir(), lora_dir(), checkpoints_dir()]


def check_path_allowed(path: str | Path, purpose: str = "folder") -> Path:
    """`path` resolved, if SD-Train may use it; SDTrainError otherwise (see file_access_allowed())."""
    resolved = resolve_allowed(path, allowed_roots(), file_access_allowed())
    if resolved is not None:
        return resolved
    roots = ", ".join(str(r) for r in allowed_roots())
    raise SDTrainError(
        f"The {purpose} {path} is outside SD-Train's folders. The WebUI is reachable from other machines "
        f"(--listen/--share), so SD-Train only uses folders inside: {roots}. Move the files there, or start the "
        "WebUI with --enable-insecure-extension-access if you trust everyone who can reach it."
    )


def api_route_dependencies() -> list:
    """FastAPI dependencies that protect a route as the WebUI's API does (modules/api/api.py: Api.add_api_route
    adds HTTP Basic auth against --api-auth "user:password[,user:password...]"). Routes added in on_app_started
    exist even without --api, and the WebUI does not protect them itself."""
    from modules import shared

    return basic_auth_dependencies(shared.cmd_opts.api_auth)


def add_api_route(app: Any, path: str, endpoint: Callable, **kwargs: Any) -> None:
    """app.add_api_route with the WebUI's API authentication (see api_route_dependencies())."""
    dependencies = list(kwargs.pop("dependencies", [])) + api_route_dependencies()
    app.add_api_route(path, endpoint, dependencies=dependencies, **kwargs)


# --- version shims: everything that differs between WebUI versions ---------------------------------------------------


def _current_sd_model() -> Any:
    """v1.6+: sd_models.model_data.sd_model (no load). Older: shared.sd_model was a plain attribute."""
    from modules import sd_models

    model_data = getattr(sd_models, "model_data", None)
    if model_data is not None:
        return model_data.sd_model
    from modules import shared

    return shared.__dict__.get("sd_model")


def _model_version(model: Any) -> ModelVersion:
    """set_model_type() (v1.6+) sets is_sd1/is_sd2/is_sdxl/is_sd3; older versions only is_sd2 (and is_sdxl)."""
    flags: tuple[tuple[str, ModelVersion], ...] = (
        ("is_sd3", "sd3"), ("is_sdxl", "sdxl"), ("is_sd2", "sd2"), ("is_sd1", "sd1"),
    )  # fmt: skip
    for flag, version in flags:
        if getattr(model, flag, False):
            return version
    return "sd1" if hasattr(model, "cond_stage_model") else "unknown"


def _uses_fp8() -> bool:
    """modules/devices.py: `fp8` (v1.8+) is True when Linear/Conv weights are stored as float8."""
    from modules import devices

    return bool(getattr(devices, "fp8", False))


def _send_model_to_cpu(model: Any) -> None:
    from modules import sd_models

    sd_models.unload_model_weights(model)


def _send_model_back(model: Any) -> None:
    """v1.6+: the model stays registered on the CPU, send_model_to_device() brings it back (lowvram-aware).
    Before v1.6 unload_model_weights() dropped it: reload_model_weights() loads it again."""
    from modules import sd_models

    if _current_sd_model() is model and hasattr(sd_models, "send_model_to_device"):
        sd_models.send_model_to_device(model)
    elif _current_sd_model() is None:
        sd_models.reload_model_weights()


def _lora_refresh_function() -> Callable[[], Any] | None:
    """The built-in Lora extension's rescan. The WebUI imports that extension's files as top-level modules while
    loading it: `networks` with list_available_networks() (v1.5+), `lora` with list_available_loras() before.
    Importing them ourselves could pick up another file of that name, so only sys.modules is consulted."""
    for module_name, function_name in (("networks", "list_available_networks"), ("lora", "list_available_loras")):
        function = getattr(sys.modules.get(module_name), function_name, None)
        if callable(function):
            return function
    return None
