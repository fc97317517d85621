"""SD-Train in the WebUI: its settings, its tab and its API routes. Thin glue only: the work lives in lib_sdtrain,
and lib_sdtrain/host/webui.py is the only other place that touches the WebUI.

The WebUI imports this file with the extension's folder first on sys.path, hence `import lib_sdtrain` works.
"""

from __future__ import annotations

import gradio as gr
from modules import script_callbacks, shared

from lib_sdtrain import __version__
from lib_sdtrain.host import settings
from lib_sdtrain.host import webui as host

TAB_TITLE = "SD-Train"
TAB_ID = "sdtrain"

STAGES = f"""
### SD-Train {__version__}

From a folder of images to a trained model, in four stages:

1. **Caption**: BLIP captions, WD14 tags, and a review of every caption.
2. **Prepare**: metadata, aspect-ratio buckets and cached latents.
3. **Train**: a LoRA (LoCon optional) or a full fine-tune, with samples, progress, cancel and resume.
4. **Use**: the new LoRA appears in the Lora tab at once.
"""


def on_ui_settings() -> None:
    for key, setting in settings.SETTINGS.items():
        option = shared.OptionInfo(
            setting.default, setting.label, section=settings.SECTION, category_id=settings.CATEGORY
        )
        shared.opts.add_option(key, option.info(setting.info) if setting.info else option)


def on_ui_tabs() -> list[tuple[gr.Blocks, str, str]]:
    with gr.Blocks(analytics_enabled=False) as tab:
        gr.Markdown(STAGES, elem_classes=["sdtrain-intro"])
    return [(tab, TAB_TITLE, TAB_ID)]


def on_app_started(_demo: gr.Blocks | None, app) -> None:
    """SD-Train's API, under /sdtrain/v1. Like the WebUI's own API it exists only with --api, and --api-auth
    protects it."""
    if not getattr(shared.cmd_opts, "api", False):
        return

    def info() -> dict:
        checkpoint = host.loaded_checkpoint()
        return {
            "version": __version__,
            "loaded_checkpoint": checkpoint.title if checkpoint else None,
            "file_access": host.file_access_allowed(),
        }

    host.add_api_route(app, "/sdtrain/v1/info", info, methods=["GET"])


script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_ui_tabs(on_ui_tabs)
script_callbacks.on_app_started(on_app_started)
