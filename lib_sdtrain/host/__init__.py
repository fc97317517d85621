"""Where SD-Train runs: inside the AUTOMATIC1111 WebUI (host.webui) or on its own (host.standalone).

Both modules have the same functions; `current()` returns the right one. A training job uses them as:

    with host.training_session("SD-Train: training my-lora", task_id=task_id):
        progress = host.current().make_progress(callback)
        ...train, calling progress.advance()/check_cancelled()...
    host.current().refresh_loras()

Only lib_sdtrain/host/webui.py imports the WebUI's `modules`, and only inside its functions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from lib_sdtrain.host import standalone, webui
from lib_sdtrain.host.types import GpuBusyError, Host, LoadedCheckpoint, LoadedWeights

__all__ = ["GpuBusyError", "Host", "LoadedCheckpoint", "LoadedWeights", "current", "training_session"]

# Where a type checker checks both modules against the Host protocol (tests/host/test_webui_host.py checks the same
# at run time, signature by signature).
_WEBUI: Host = webui
_STANDALONE: Host = standalone


def current() -> Host:
    """host.webui inside a running WebUI, else host.standalone."""
    return webui if webui.is_webui() else standalone


@contextlib.contextmanager
def training_session(
    job_name: str, *, task_id: str | None = None, unload: bool | None = None, wait: bool = True
) -> Iterator[Host]:
    """Everything around a GPU job, in the order that keeps the WebUI consistent: take the GPU lock (queueing
    behind generations), start the WebUI job, free VRAM; afterwards give the model back, end the job, release the
    lock, also when the job raised. Yields the host. Do not nest it inside wrap_gradio_gpu_call (same lock)."""
    host = current()
    with (
        host.gpu_lock(wait=wait, task_id=task_id),
        host.job(job_name, task_id=task_id),
        host.free_vram_for_training(unload=unload),
    ):
        yield host
