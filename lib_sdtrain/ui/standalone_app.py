"""The standalone app: the SD-Train UI and API in a plain Gradio server, with the standalone host."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import lib_sdtrain

STYLE_CSS = Path(lib_sdtrain.__file__).resolve().parent.parent / "style.css"
PAGE_JS = STYLE_CSS.with_name("javascript") / "sdtrain.js"


@dataclass
class AppSettings:
    home: str | None = None
    listen: bool = False
    port: int = 7870
    share: bool = False
    auth: str | None = None
    api: bool = False
    api_auth: str | None = None
    dataset_dir: str | None = None
    output_dir: str | None = None
    models_dir: str | None = None
    checkpoints_dir: str | None = None
    lora_dir: str | None = None


def parse_auth(spec: str | None) -> list[tuple[str, str]] | None:
    from lib_sdtrain.host.auth import parse_credentials

    credentials = parse_credentials(spec)
    return list(credentials.items()) or None


def configure_host(settings: AppSettings):
    """The standalone host with the app's folders; SD-Train's folders only when others can reach the server."""
    from lib_sdtrain.host import standalone

    folders = {
        key: getattr(settings, key)
        for key in ("home", "dataset_dir", "output_dir", "models_dir", "checkpoints_dir", "lora_dir")
        if getattr(settings, key)
    }
    standalone.configure(**folders, restrict_file_access=settings.listen or settings.share, api_auth=settings.api_auth)
    for folder in standalone.allowed_roots():
        folder.mkdir(parents=True, exist_ok=True)
    return standalone


def create_app(settings: AppSettings):
    """(blocks, host): the UI built for the standalone host, queued (the page polls jobs with `every=`)."""
    from lib_sdtrain.ui.app import build_ui

    host = configure_host(settings)
    css = STYLE_CSS.read_text(encoding="utf-8") if STYLE_CSS.is_file() else None
    blocks = build_ui(host, css=css)
    with blocks:  # the WebUI adds javascript/*.js to its page; Gradio 3.41 has no such option, so the page does it
        blocks.load(None, None, None, _js=page_script())
    blocks.queue(concurrency_count=8, api_open=False)
    return blocks, host


def page_script() -> str:
    """A Gradio `_js` function that adds javascript/sdtrain.js to the page once, as a script of its own (so its
    functions are global, as in the WebUI)."""
    source = PAGE_JS.read_text(encoding="utf-8") if PAGE_JS.is_file() else ""
    return (
        "() => { if (!document.getElementById('sdtrain-page-js')) { const s = document.createElement('script'); "
        f"s.id = 'sdtrain-page-js'; s.textContent = {json.dumps(source)}; document.head.appendChild(s); }} }}"
    )


def gradio_temp_dir() -> Path:
    """Where Gradio 3.41 keeps the copies of the files a page shows (components/base.py: DEFAULT_TEMP_DIR), and
    its uploads (routes.py: App.uploaded_file_dir)."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


def blocked_folders() -> list[str]:
    """What Gradio must never serve. By default Gradio 3.41 serves every file under the process's working folder
    at /file=PATH to anyone who can reach it (routes.py: in_app_dir). The page needs none of them: it shows copies
    in Gradio's temp folder. So the working folder is blocked, unless it holds that temp folder (the app started
    from / or /tmp); then hide_working_folder() takes over."""
    cwd = Path.cwd().resolve()
    temp = gradio_temp_dir()
    return [] if cwd == temp or cwd in temp.parents else [str(cwd)]


def hide_working_folder(app) -> None:
    """Point the app's idea of its own folder (routes.App.cwd, read at each /file= request) at Gradio's temp folder,
    whose files it serves anyway, so nothing is served for being under the working folder. Done as soon as launch()
    returns; blocked_folders() already covers every start but one from a folder that holds the temp folder."""
    app.cwd = str(gradio_temp_dir())


def serve(settings: AppSettings, block: bool = True):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    blocks, host = create_app(settings)
    app, local_url, share_url = blocks.launch(
        server_name="0.0.0.0" if settings.listen else "127.0.0.1",
        server_port=settings.port,
        share=settings.share,
        auth=parse_auth(settings.auth),
        prevent_thread_lock=True,
        show_api=False,
        quiet=True,
        blocked_paths=blocked_folders(),
    )
    hide_working_folder(app)
    if settings.api:
        from lib_sdtrain.api import register_routes

        register_routes(app, host)
    print(f"SD-Train is at {local_url}" + (f" and {share_url}" if share_url else ""), flush=True)
    print(
        f"Datasets: {host.dataset_dir()}  Checkpoints: {host.checkpoints_dir()}  Outputs: {host.output_dir()}",
        flush=True,
    )
    if block:
        blocks.block_thread()
    return blocks
