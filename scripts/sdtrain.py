"""SD-Train in the WebUI: its settings, its tab and its API routes. Thin glue only: the work lives in lib_sdtrain,
and lib_sdtrain/host/webui.py is the only other place that touches the WebUI.

The WebUI imports this file with the extension's folder first on sys.path, hence `import lib_sdtrain` works.
"""

from __future__ import annotations

import gradio as gr
from modules import script_callbacks, shared

from lib_sdtrain.host import settings
from lib_sdtrain.host import webui as host

TAB_TITLE = "SD-Train"
TAB_ID = "sdtrain"


def on_ui_settings() -> None:
    for key, setting in settings.SETTINGS.items():
        option = shared.OptionInfo(
            setting.default, setting.label, section=settings.SECTION, category_id=settings.CATEGORY
        )
        shared.opts.add_option(key, option.info(setting.info) if setting.info else option)


def on_ui_tabs() -> list[tuple[gr.Blocks, str, str]]:
    from lib_sdtrain.ui.app import build_ui  # here, so a UI import error costs the tab, not the settings

    return [(build_ui(host), TAB_TITLE, TAB_ID)]


def on_app_started(_demo: gr.Blocks | None, app) -> None:
    """SD-Train's API, under /sdtrain/v1 (lib_sdtrain/api.py). Like the WebUI's own API it exists only with --api,
    and --api-auth protects it."""
    if not getattr(shared.cmd_opts, "api", False):
        return
    from lib_sdtrain.api import register_routes

    register_routes(app, host)


script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_ui_tabs(on_ui_tabs)
script_callbacks.on_app_started(on_app_started)
