"""SD-Train's WebUI settings (Settings > SD-Train). scripts/sdtrain.py registers them; host.*.option() falls back to
these defaults, so code reads a setting the same way inside and outside the WebUI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SECTION = ("sdtrain", "SD-Train")
CATEGORY = "training"


@dataclass(frozen=True)
class Setting:
    default: Any
    label: str
    info: str = ""


SETTINGS: dict[str, Setting] = {
    "sdtrain_unload_model": Setting(
        True,
        "Move the WebUI's model to RAM while SD-Train trains",
        "frees its VRAM for training; it returns to the GPU when training ends or fails",
    ),
    "sdtrain_live_preview": Setting(True, "Show SD-Train's sample images as the live preview"),
    "sdtrain_refresh_after_training": Setting(
        True,
        "Refresh the Lora and checkpoint lists when a training finishes",
        "new LoRAs appear in the Lora tab without a restart",
    ),
    "sdtrain_lora_subfolder": Setting(
        "",
        "Subfolder of the Lora folder for trained LoRAs",
        "empty: the Lora folder itself",
    ),
    "sdtrain_copy_intermediate": Setting(
        False,
        "Also add the intermediate saves (save_every_n_epochs/steps) to the Lora folder",
    ),
}


def default(key: str, fallback: Any = None) -> Any:
    setting = SETTINGS.get(key)
    return setting.default if setting is not None else fallback
