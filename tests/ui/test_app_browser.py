"""The standalone app in real Chromium, as a new user would use it: demo set -> caption -> tag -> edit a caption and
bulk-add the trigger word -> prepare -> train a tiny LoRA with samples (reloading the page mid-run) -> generate with
the LoRA. A second test cancels a run and resumes it from its saved state."""

from __future__ import annotations

import io
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.timeout(900)

LONG = 240_000  # ms: jobs on two CPU cores next to other work


def text_of(page, selector: str) -> str:
    return page.locator(selector).first.inner_text()  # gr.HTML repeats its elem_id on an inner element


def wait_js(page, expression: str, arg=None, timeout: int = LONG) -> None:
    # Polled, not on every animation frame: the test's checks must not take the CPU from the server.
    page.wait_for_function(expression, arg=arg, timeout=timeout, polling=250)


def wait_text(page, selector: str, text: str, timeout: int = LONG) -> None:
    wait_js(page, "([s, t]) => { const e = document.querySelector(s); return !!e && e.innerText.includes(t); }",
            [selector, text], timeout)  # fmt: skip


def wait_job(page, title: str, status: str = "done") -> None:
    wait_text(page, "#sdtrain_status", f"{title} · {status}")


def field(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def set_value(page, elem_id: str, value) -> None:
    box = field(page, elem_id)
    box.fill(str(value))
    box.press("Tab")  # Gradio 3 number boxes take their value on blur


def choose(page, elem_id: str, text: str) -> None:
    """Pick the option containing `text` from a Gradio 3.41 dropdown."""
    option = page.locator(f"#{elem_id} ul.options li", has_text=text).first
    for _ in range(10):  # the choices may still be on their way from the server
        field(page, elem_id).click()
        field(page, elem_id).fill(text)  # Gradio 3.41 filters the options by the text in the box
        try:
            option.click(timeout=3000)
            return
        except Exception:
            page.keyboard.press("Escape")
    raise AssertionError(f"no option {text!r} in #{elem_id}")


def open_tab(page, name: str) -> None:
    page.locator("#sdtrain_tabs .tab-nav button", has_text=name).click()


def current_step(page) -> int:
    match = re.search(r"training · (\d+)/\d+", text_of(page, "#sdtrain_train_progress"))
    return int(match[1]) if match else -1


def gallery_images(page, elem_id: str) -> list[np.ndarray]:
    """The pixels of a gallery's images, fetched the way the browser fetches them."""
    sources = page.locator(f"#{elem_id} .thumbnail-item img").evaluate_all("els => els.map(e => e.src)")
    arrays = []
    for src in sources:
        with urllib.request.urlopen(src, timeout=30) as response:
            arrays.append(np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"), dtype=np.int16))
    return arrays


def test_from_images_to_a_lora_by_clicking(app, browser, page, shot):
    page.goto(app.url)
    wait_text(page, "#sdtrain_status", "No job running")
    wait_text(page, "#sdtrain_demo_notice", "No Stable Diffusion model found")
    shot(page, "start-no-model")

    page.click("#sdtrain_make_demo")
    wait_text(page, "#sdtrain_demo_notice", "Demo ready", timeout=LONG)
    wait_text(page, "#sdtrain_shown", "12 of 12 images shown")
    shot(page, "demo-ready")

    # Caption and tag: jobs on the server; the gallery labels change when they finish.
    page.click("#sdtrain_caption")
    wait_job(page, "Captioning (BLIP)")
    page.click("#sdtrain_tag")
    wait_job(page, "Tagging (WD14)")
    wait_text(page, "#sdtrain_gallery", "· caption ·")
    shot(page, "captioned-and-tagged")

    # Review one image: its caption and tags load for editing, and Save writes them.
    page.locator("#sdtrain_gallery .thumbnail-item").first.click()
    wait_js(page, "() => document.querySelector('#sdtrain_tags_box textarea').value.length > 0")
    image_path = field(page, "sdtrain_current").input_value()
    set_value(page, "sdtrain_caption_box", "a round red creature on a hill")
    page.click("#sdtrain_save_image")
    wait_text(page, "#sdtrain_edit_message", "Saved")
    caption_file = re.sub(r"\.png$", ".caption", image_path)
    assert Path(caption_file).read_text(encoding="utf-8").strip() == "a round red creature on a hill"

    # Bulk edit: the trigger word first in every tag file of the (unfiltered) set, with a count first.
    page.locator("#sdtrain_bulk").get_by_text("Bulk edit tags").click()
    set_value(page, "sdtrain_trigger_word", "sks")
    page.get_by_role("button", name="Add trigger word to front").click()
    wait_text(page, "#sdtrain_bulk_message", "would change 12 of the 12")
    page.click("#sdtrain_bulk_apply")
    wait_text(page, "#sdtrain_bulk_message", "changed 12 tag files")
    shot(page, "edited")
    tag_file = re.sub(r"\.png$", ".txt", image_path)
    assert Path(tag_file).read_text(encoding="utf-8").startswith("sks, ")

    # Prepare: merge, buckets, latents; the histogram and bucket table appear.
    open_tab(page, "2. Prepare")
    page.click("#sdtrain_prepare")
    wait_job(page, "Preparing the dataset")
    page.wait_for_selector("#sdtrain_histogram img")
    wait_text(page, "#sdtrain_bucket_table", "96x96")
    shot(page, "prepared")

    # Train: the demo preset, a run long enough to reload the page in the middle of it.
    open_tab(page, "3. Train")
    page.click("#sdtrain_apply_preset")
    wait_js(page, "() => document.querySelector('#sdtrain_opt_network_dim input').value === '8'")
    set_value(page, "sdtrain_opt_max_train_steps", 200)
    page.click("#sdtrain_check")  # what the run will do, before it starts: 12 images, 3 buckets, 200 steps
    wait_text(page, "#sdtrain_train_message", "200 steps")
    assert "12 images" in text_of(page, "#sdtrain_train_message") and "3 buckets" in text_of(
        page, "#sdtrain_train_message"
    )
    shot(page, "train-form")
    page.click("#sdtrain_start")
    wait_text(page, "#sdtrain_train_message", "Started")
    wait_js(page, "() => /training · [1-9]\\d*\\//.test(document.querySelector('#sdtrain_train_progress').innerText)",
                           timeout=LONG)  # fmt: skip
    page.wait_for_selector("#sdtrain_samples .thumbnail-item img", timeout=LONG)
    page.wait_for_selector("#sdtrain_loss_plot canvas, #sdtrain_loss_plot svg", timeout=LONG)
    shot(page, "training")

    # Reload mid-run: the page re-attaches to the job the server is running, and its progress goes on.
    page.reload()
    open_tab(page, "3. Train")
    wait_text(page, "#sdtrain_status", "Training · running")
    # The form shows the running job's settings again, not the defaults.
    wait_js(page, "() => document.querySelector('#sdtrain_opt_max_train_steps input').value === '200'")
    wait_js(page, "() => /training · \\d+\\//.test(document.querySelector('#sdtrain_train_progress').innerText)")
    before = current_step(page)
    wait_js(
        page,
        "n => { const m = /training · (\\d+)\\//.exec(document.querySelector('#sdtrain_train_progress').innerText);"
        " return m && +m[1] > n; }",
        arg=before,
    )
    shot(page, "after-reload")
    # A second browser sees the same job.
    other = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    other.goto(app.url)
    wait_text(other, "#sdtrain_status", "Training · ")
    other.context.close()
    wait_job(page, "Training")
    wait_text(page, "#sdtrain_result", "demo.safetensors")
    page.wait_for_selector("#sdtrain_loss_plot canvas, #sdtrain_loss_plot svg")
    shot(page, "trained")

    # Generate: the new LoRA is listed; with it the image differs from the same seed without it.
    open_tab(page, "4. Generate")
    choose(page, "sdtrain_gen_lora", "demo.safetensors")  # listed when the training finished
    set_value(page, "sdtrain_gen_prompt", "sks, creature")
    for label, value in (("Width", 96), ("Height", 96), ("Steps", 8)):
        page.get_by_label(label, exact=True).fill(str(value))
    page.click("#sdtrain_generate")
    wait_text(page, "#sdtrain_gen_message", "Seed")
    wait_js(page, "() => document.querySelectorAll('#sdtrain_gen_gallery .thumbnail-item img').length === 2")
    shot(page, "generated")
    with_lora, without = gallery_images(page, "sdtrain_gen_gallery")
    assert with_lora.shape == without.shape == (96, 96, 3)
    assert np.abs(with_lora - without).mean() > 1.0


def test_cancel_a_run_then_resume_it(app, page, shot):
    demo = app.home / "sd-train" / "datasets" / "demo"
    if not (demo / "meta_lat.json").is_file():  # the first test prepares it; alone, this test does it by API
        from lib_sdtrain.demo.make import make_demo

        paths = make_demo(app.home / "models" / "sd-train", app.home / "sd-train" / "datasets")
        app.run_job("prepare", {"train_data_dir": str(paths.dataset), "model": str(paths.sd_model),
                                "max_resolution": "96,96", "min_bucket_reso": 64, "max_bucket_reso": 128,
                                "bucket_reso_steps": 16})  # fmt: skip
    page.goto(app.url)
    open_tab(page, "3. Train")
    choose(page, "sdtrain_preset", "demo-tiny")
    page.click("#sdtrain_apply_preset")
    wait_js(page, "() => document.querySelector('#sdtrain_opt_network_dim input').value === '8'")
    set_value(page, "sdtrain_opt_train_data_dir", "demo")
    set_value(page, "sdtrain_opt_output_name", "resumable")
    set_value(page, "sdtrain_opt_max_train_steps", 5000)
    page.click("#sdtrain_start")
    wait_js(page, "() => /training · ([2-9]\\d|\\d{3,})\\//.test("
                           "document.querySelector('#sdtrain_train_progress').innerText)", timeout=LONG)  # fmt: skip
    page.click("#sdtrain_cancel")
    wait_job(page, "Training", "cancelled")
    wait_text(page, "#sdtrain_result", "Cancelled at step")
    cancelled_at = int(re.search(r"Cancelled at step (\d+)", text_of(page, "#sdtrain_result"))[1])
    shot(page, "cancelled")

    # The saved state is offered; resuming finishes the run from where it stopped.
    page.click("#sdtrain_refresh_states")
    wait_js(page, "() => document.querySelector('#sdtrain_states input').value.endsWith('resumable-state')")
    set_value(page, "sdtrain_opt_max_train_steps", cancelled_at + 60)
    page.click("#sdtrain_resume")
    wait_job(page, "Training")
    log = field(page, "sdtrain_log").input_value()
    assert f"at step {cancelled_at}" in log and "Resumed from" in log
    wait_text(page, "#sdtrain_result", f"Finished after {cancelled_at + 60} steps")
    shot(page, "resumed")

    # The run's config loads back into a fresh form, and the form saves as a user preset.
    page.reload()
    open_tab(page, "3. Train")
    page.locator("#sdtrain_config").get_by_text("Config: TOML, presets, previous runs").click()
    page.click("#sdtrain_refresh_previous")
    choose(page, "sdtrain_previous", "resumable.sdtrain.toml")
    page.click("#sdtrain_load_previous")
    wait_text(page, "#sdtrain_config_message", "Loaded")
    assert field(page, "sdtrain_opt_output_name").input_value() == "resumable"
    assert field(page, "sdtrain_opt_network_dim").input_value() == "8"
    set_value(page, "sdtrain_preset_name", "my-demo")
    page.click("#sdtrain_save_preset")
    wait_text(page, "#sdtrain_config_message", "my-demo.toml")
    assert "network_dim = 8" in (app.home / "outputs" / "sd-train" / "presets" / "my-demo.toml").read_text()
    shot(page, "config-loaded")


def note_of(page, field_name: str):
    return page.locator(f".sdtrain-field-{field_name} > .sdtrain-field-note")


def test_an_error_about_a_field_is_shown_beside_it(app, page, shot):
    """Each tab's refusal names its field under the form and beside the field itself, opening a collapsed section
    to show it; editing the field, or the next message, takes the note away."""
    page.goto(app.url)
    field(page, "sdtrain_dataset_folder").fill("no-such-folder")
    field(page, "sdtrain_dataset_folder").press("Enter")  # a typed value of a Gradio 3.41 dropdown
    page.click("#sdtrain_caption")
    wait_text(page, "#sdtrain_dataset_message", "does not exist")
    note = note_of(page, "train_data_dir")
    note.wait_for(state="visible")
    assert "no-such-folder does not exist" in note.inner_text()
    assert page.locator("#sdtrain_dataset_folder.sdtrain-field-invalid").count() == 1
    field(page, "sdtrain_dataset_folder").type("x")  # editing the field takes its note away
    note.wait_for(state="detached")

    open_tab(page, "3. Train")
    set_value(page, "sdtrain_opt_max_train_epochs", -3)
    page.click("#sdtrain_check")
    note = note_of(page, "max_train_epochs")
    note.wait_for(state="visible")
    assert "max_train_epochs" in note.inner_text() and "1 or more" in note.inner_text()
    assert "max_train_epochs" in text_of(page, "#sdtrain_train_message")
    set_value(page, "sdtrain_opt_max_train_epochs", "")
    # An option in the collapsed "Advanced" section: the section opens to show the field and its note.
    page.locator("#sdtrain_advanced").get_by_text("Advanced: every other option").click()
    set_value(page, "sdtrain_opt_min_bucket_reso", 4)
    page.locator("#sdtrain_advanced").get_by_text("Advanced: every other option").click()
    assert not page.locator("#sdtrain_opt_min_bucket_reso").is_visible()
    page.click("#sdtrain_check")
    note = note_of(page, "min_bucket_reso")
    note.wait_for(state="visible")
    assert "min_bucket_reso" in note.inner_text()
    assert page.locator("#sdtrain_opt_min_bucket_reso").is_visible()
    shot(page, "field-error")
    set_value(page, "sdtrain_opt_min_bucket_reso", 256)
    page.click("#sdtrain_check")  # the next message (whatever it says) replaces the note
    note.wait_for(state="detached")
