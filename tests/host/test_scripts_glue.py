"""scripts/sdtrain.py loaded into the WebUI stand-in the way the WebUI loads extension scripts, and the rules that
keep SD-Train a good neighbour in the WebUI's process."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
from pathlib import Path

import pytest

from lib_sdtrain.host import webui as adapter

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "sdtrain.py"


def load_script(stub):
    """modules/script_loading.py: load_module(path), named after the file, the extension folder on sys.path."""
    spec = importlib.util.spec_from_file_location(SCRIPT.name, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def callbacks(stub, kind: str) -> list:
    return [c for c in stub.script_callbacks.callback_map[f"callbacks_{kind}"] if c.script == str(SCRIPT)]


def test_the_script_registers_its_callbacks(webui):
    load_script(webui)
    for kind in ("ui_settings", "ui_tabs", "app_started"):
        assert len(callbacks(webui, kind)) == 1, kind


def test_settings_appear_in_their_own_section(webui):
    load_script(webui)
    webui.script_callbacks.ui_settings_callback()
    assert webui.script_callbacks.errors_reported == []
    labels = webui.shared.opts.data_labels
    ours = {k: v for k, v in labels.items() if k.startswith("sdtrain_")}
    assert set(ours) == {
        "sdtrain_unload_model", "sdtrain_live_preview", "sdtrain_refresh_after_training", "sdtrain_lora_subfolder",
        "sdtrain_copy_intermediate",
    }  # fmt: skip
    assert all(v.section == ("sdtrain", "SD-Train") and v.category_id == "training" for v in ours.values())
    assert webui.shared.opts.sdtrain_unload_model is True
    webui.shared.opts.sdtrain_unload_model = False  # what saving the Settings page does
    assert adapter.option("sdtrain_unload_model") is False


def test_the_tab_is_sdtrains_ui_with_the_loaded_checkpoint_as_base_model(webui):
    import gradio as gr

    load_script(webui)
    tabs = webui.script_callbacks.ui_tabs_callback()
    assert webui.script_callbacks.errors_reported == []
    assert len(tabs) == 1
    blocks, title, elem_id = tabs[0]
    assert isinstance(blocks, gr.Blocks) and (title, elem_id) == ("SD-Train", "sdtrain")
    by_id = {getattr(b, "elem_id", None): b for b in blocks.blocks.values()}
    tab_titles = [b.label for b in blocks.blocks.values() if isinstance(b, gr.Tab)]
    assert tab_titles == ["1. Dataset", "2. Prepare", "3. Train"]  # generating is the WebUI's own job
    base_model = by_id["sdtrain_opt_pretrained_model_name_or_path"]
    assert base_model.choices[0] in ("loaded checkpoint", ("loaded checkpoint", "loaded checkpoint"))
    assert base_model.value == "loaded checkpoint"
    assert "sdtrain_finished" in by_id and "sdtrain_status" in by_id  # what javascript/sdtrain.js watches
    assert "sdtrain_make_demo" in by_id  # the demo models, offline, in the WebUI's models folder too
    notice = by_id["sdtrain_demo_notice"].value
    assert str(adapter.models_dir()) in notice and "loaded" in notice


def test_the_demo_from_the_webui_tab_lands_in_the_webuis_models_folder(webui):
    from lib_sdtrain.ui.app import _make_demo

    message, dataset, *_ = _make_demo(adapter)
    assert "Demo ready" in message, message
    assert (adapter.models_dir() / "demo" / "sd-tiny" / "model_index.json").is_file()
    assert str(adapter.models_dir() / "demo" / "sd-tiny") in adapter.base_model_choices()
    assert (adapter.dataset_dir() / "demo").is_dir() and dataset["value"] == "demo"


@pytest.mark.parametrize("api", [False, True])
def test_api_route_only_with_api_and_behind_api_auth(start_webui, api):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    stub = start_webui("--api --api-auth user:pw" if api else "")
    load_script(stub)
    app = FastAPI()
    stub.script_callbacks.app_started_callback(None, app)
    assert stub.script_callbacks.errors_reported == []
    client = TestClient(app)
    if not api:
        assert client.get("/sdtrain/v1/info").status_code == 404
        return
    assert client.get("/sdtrain/v1/info").status_code == 401
    body = client.get("/sdtrain/v1/info", auth=("user", "pw")).json()
    assert body["loaded_checkpoint"] is None and body["file_access"] is True and body["version"]


def test_no_top_level_webui_imports_in_lib_sdtrain():
    """Only lib_sdtrain/host/webui.py may reach the WebUI, and only inside functions."""
    offenders = []
    for path in (ROOT / "lib_sdtrain").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in ("modules", "launch")]
    assert offenders == []


def test_no_module_names_that_clash_with_the_webui():
    """The extension folder is on sys.path while its scripts load: its top-level names must not shadow the
    built-in Lora extension's modules (or the WebUI's own packages)."""
    taken = {"network", "networks", "lora", "lora_patches", "extra_networks_lora", "modules", "launch", "webui"}
    top_level = {p.stem for p in ROOT.glob("*.py")} | {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    scripts = {p.stem for p in (ROOT / "scripts").glob("*.py")}
    assert (top_level | scripts) & taken == set()


def test_refresh_cards_script_clicks_both_hidden_buttons(tmp_path):
    """javascript/sdtrain.js in node, with a minimal page holding the WebUI's hidden refresh buttons."""
    page = """
const clicks = [];
const elements = {};
for (const id of ["txt2img_lora_extra_refresh_internal", "img2img_lora_extra_refresh_internal"]) {
    elements[id] = { dispatchEvent: (event) => clicks.push(`${id}:${event.type}`) };
}
globalThis.gradioApp = () => ({ getElementById: (id) => elements[id] || null });
globalThis.Event = class { constructor(type) { this.type = type; } };
const script = require("fs").readFileSync(process.argv[2], "utf8");
(0, eval)(script);
const out = sdtrainRefreshLoraCards("a", 1);
delete elements["img2img_lora_extra_refresh_internal"];
sdtrainRefreshLoraCards();
console.log(JSON.stringify({ clicks, out }));
"""
    data = run_with_sdtrain_js(tmp_path, page)
    assert data["out"] == ["a", 1]
    assert data["clicks"] == [
        "txt2img_lora_extra_refresh_internal:click",
        "img2img_lora_extra_refresh_internal:click",
        "txt2img_lora_extra_refresh_internal:click",
    ]


def test_a_finished_training_refreshes_the_lora_cards_once(tmp_path):
    """javascript/sdtrain.js's watcher in node: the WebUI calls it after UI updates; it clicks the hidden Lora
    refresh buttons once per finished train job, not for other jobs, not again for the same job."""
    page = """
const clicks = [];
const box = { value: "" };
const elements = {
    txt2img_lora_extra_refresh_internal: { dispatchEvent: () => clicks.push("txt2img") },
    img2img_lora_extra_refresh_internal: { dispatchEvent: () => clicks.push("img2img") },
};
globalThis.gradioApp = () => ({
    getElementById: (id) => elements[id] || null,
    querySelector: (selector) => (selector.startsWith("#sdtrain_finished") ? box : null),
    querySelectorAll: () => [],  // no messages on this page
});
globalThis.Event = class { constructor(type) { this.type = type; } };
const callbacks = [];
globalThis.onAfterUiUpdate = (cb) => callbacks.push(cb);
(0, eval)(require("fs").readFileSync(process.argv[2], "utf8"));
const counts = [];
for (const value of ["", "", "report-1-17", "train-2-17", "train-2-17", "caption-3-17", "train-4-17"]) {
    box.value = value;
    callbacks.forEach((cb) => cb());
    counts.push(clicks.length);
}
console.log(JSON.stringify({ registered: callbacks.length, counts }));
"""
    data = run_with_sdtrain_js(tmp_path, page)
    assert data == {"registered": 1, "counts": [0, 0, 0, 2, 2, 2, 4]}


def test_css_rules_are_scoped_to_sdtrain_classes():
    css = (ROOT / "style.css").read_text()
    body = "\n".join(line for line in css.splitlines() if not line.strip().startswith("/*"))
    selectors = [chunk.split("{")[0].strip() for chunk in body.split("}") if "{" in chunk]
    assert selectors and all(s.startswith((".sdtrain-", "#sdtrain")) for s in selectors)


def run_with_sdtrain_js(tmp_path, page: str) -> dict:
    """Run `page` (JavaScript that stands in for the WebUI page, loads javascript/sdtrain.js from argv[2] and
    prints JSON) in node; its JSON output."""
    import json

    runner = tmp_path / "page.js"
    runner.write_text(page)
    try:
        result = subprocess.run(
            ["node", str(runner), str(ROOT / "javascript" / "sdtrain.js")], capture_output=True, text=True, timeout=30
        )
    except FileNotFoundError:
        pytest.skip("node is not installed")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
