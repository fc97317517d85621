"""1. Dataset: choose or upload a folder, caption (BLIP) and tag (WD14) it as jobs, review and edit each image's
caption and tags, bulk-edit tags over the filtered images, and check the dataset's health."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from lib_sdtrain.dataset import editing
from lib_sdtrain.dataset.captioning import DEFAULT_BLIP
from lib_sdtrain.dataset.tagging import DEFAULT_REPO
from lib_sdtrain.errors import InputError, SDTrainError
from lib_sdtrain.models import discovery
from lib_sdtrain.ui.common import error_for, field_classes, message_html, resolve_folder, start_job, subfolders

if TYPE_CHECKING:
    from lib_sdtrain.host.types import Host

PAGE_SIZE = 24
CAPTION_EXT, TAG_EXT = ".caption", ".txt"


@dataclass
class DatasetControls:
    """What other tabs read from this one."""

    folder: gr.Dropdown
    lora_name: gr.Textbox
    trigger_word: gr.Textbox
    refresh: Any  # a function that re-reads the folder: (folder, query, untagged, page) -> gallery outputs
    gallery_outputs: list
    filter_inputs: list
    message: gr.HTML
    report_outputs: list
    models: list  # the BLIP and tagger dropdowns


def folder_path(host: Host, value: str) -> Path:
    """The folder a user chose, checked against the host's access rule (--listen confines it)."""
    if not value:
        raise InputError("train_data_dir", "Choose a dataset folder, or upload images into a new one.")
    try:
        path = host.check_path_allowed(resolve_folder(value, host.dataset_dir()), "dataset folder")
    except SDTrainError as e:
        raise InputError("train_data_dir", str(e)) from None
    if not path.is_dir():
        raise InputError("train_data_dir", f"The folder {path} does not exist.")
    return path


def blip_choices(host: Host) -> list[str]:
    return [str(p) for p in discovery.blip_models([host.models_dir()])] + [DEFAULT_BLIP]


def tagger_choices(host: Host) -> list[str]:
    return [str(p) for p in discovery.taggers([host.models_dir()])] + [DEFAULT_REPO]


# --- gallery and selection -------------------------------------------------------------------------------------------


def _label(entry: editing.Entry) -> str:
    caption = "caption" if entry.caption.strip() else "no caption"
    return f"{entry.name} · {caption} · {len(entry.tags)} tags"


def show_page(host: Host, folder: str, query: str, untagged: bool, page: float | None):
    """The gallery page of the filtered images: (gallery, state, 'N of M shown', page, message)."""
    try:
        path = folder_path(host, folder)
    except Exception as e:
        return [], {"paths": [], "filtered": []}, "", 1, error_for(e)
    entries = editing.load_entries(path, CAPTION_EXT, TAG_EXT)
    filtered = editing.filter_entries(entries, query or "", bool(untagged))
    pages = max(1, -(-len(filtered) // PAGE_SIZE))
    number = min(max(int(page or 1), 1), pages)
    shown = filtered[(number - 1) * PAGE_SIZE : number * PAGE_SIZE]
    state = {"folder": str(path), "paths": [str(e.path) for e in shown], "filtered": [str(e.path) for e in filtered]}
    counts = f"{len(filtered)} of {len(entries)} images shown · page {number} of {pages}"
    untagged_count = len(editing.filter_entries(entries, "", True))
    if untagged_count:
        counts += f" · {untagged_count} without caption or tags"
    return [(str(e.path), _label(e)) for e in shown], state, counts, number, ""


# The selected image is kept in a gr.State (on the server), never taken back from the page: a client could send
# any path in a text field, and Save writes files beside it.


def select_image(state: dict, evt: gr.SelectData):
    paths = (state or {}).get("paths", [])
    if not paths or evt.index >= len(paths):
        return None, "", "", "", ""
    return _editor_values(Path(paths[evt.index]))


def _editor_values(path: Path):
    """(preview, file, caption, tags, selected state) of one image."""
    entry = editing.load_entries_for([path], CAPTION_EXT, TAG_EXT)[0]
    return str(path), str(path), entry.caption, editing.join_tags(entry.tags), str(path)


def step_image(state: dict, current: str, step: int):
    """The previous/next image of the filtered list."""
    filtered = (state or {}).get("filtered", [])
    if not filtered:
        return None, "", "", "", ""
    index = filtered.index(current) + step if current in filtered else 0
    return _editor_values(Path(filtered[index % len(filtered)]))


def save_image_texts(current: str, caption: str, tags: str) -> str:
    if not current:
        return message_html("Click an image first.", "error")
    entry = editing.load_entries_for([Path(current)], CAPTION_EXT, TAG_EXT)[0]
    written = editing.save_entry(entry, caption, tags, CAPTION_EXT, TAG_EXT)
    if not written:
        return message_html(f"{entry.name}: nothing changed.")
    return message_html(f"Saved {', '.join(p.name for p in written)}.", "ok")


# --- bulk edits ------------------------------------------------------------------------------------------------------


def _bulk_plan(state: dict, operation: str, tag: str, replacement: str):
    paths = [Path(p) for p in (state or {}).get("filtered", [])]
    entries = editing.load_entries_for(paths, CAPTION_EXT, TAG_EXT)
    return editing.plan_bulk_edit(entries, operation, tag, replacement)


def preview_bulk(state: dict, operation: str, tag: str, replacement: str) -> str:
    try:
        changes = _bulk_plan(state, operation, tag, replacement)
    except Exception as e:
        return error_for(e)
    total = len((state or {}).get("filtered", []))
    names = ", ".join(c.entry.name for c in changes[:8]) + (" ..." if len(changes) > 8 else "")
    return message_html(f"'{operation}' would change {len(changes)} of the {total} filtered images' tag files. {names}")


def apply_bulk(state: dict, operation: str, tag: str, replacement: str) -> str:
    try:
        changes = _bulk_plan(state, operation, tag, replacement)
        count = editing.apply_bulk_edit(changes, TAG_EXT)
    except Exception as e:
        return error_for(e)
    return message_html(f"'{operation}' {tag!r}: changed {count} tag files.", "ok")


# --- jobs ------------------------------------------------------------------------------------------------------------


def start_caption(
    host: Host, folder, model, beam_search, overwrite, batch_size, num_beams, top_p, min_length, max_length
):
    def options():
        return {
            "train_data_dir": str(folder_path(host, folder)), "caption_weights": model, "beam_search": beam_search,
            "overwrite": overwrite, "batch_size": batch_size, "num_beams": num_beams, "top_p": top_p,
            "min_length": min_length, "max_length": max_length,
        }  # fmt: skip

    return start_job("caption", options, "Existing captions are kept unless 'Overwrite' is ticked.")


def start_tag(host: Host, folder, model, thresh, remove_underscore, existing, character_threshold, undesired, rating):
    def options():
        model_key = "model_dir" if Path(model).expanduser().is_dir() else "repo_id"
        return {
            "train_data_dir": str(folder_path(host, folder)), model_key: model, "thresh": thresh,
            "remove_underscore": remove_underscore, "overwrite": existing == "overwrite",
            "append_tags": existing == "append", "character_threshold": character_threshold or None,
            "undesired_tags": undesired, "use_rating_tags": rating,
        }  # fmt: skip

    return start_job("tag", options)


def start_report(host: Host, folder) -> str:
    return start_job("report", lambda: {"train_data_dir": str(folder_path(host, folder))})


def upload(host: Host, files, name: str):
    if not files:
        return gr.update(), message_html("Choose images or a zip file first.", "error")
    try:
        result = editing.import_files([f.name for f in files], host.dataset_dir(), (name or "").strip())
    except Exception as e:
        return gr.update(), error_for(e)
    skipped = "; ".join(f"{n}: {why}" for n, why in list(result.skipped.items())[:10])
    text = f"Added {len(result.added)} images to {result.folder}." + (
        f" Skipped {len(result.skipped)}: {skipped}" if skipped else ""
    )
    return gr.update(choices=subfolders(host.dataset_dir()), value=result.folder.name), message_html(text, "ok")


# --- layout ----------------------------------------------------------------------------------------------------------


def build(host: Host) -> DatasetControls:
    with gr.Row(elem_classes=["sdtrain-row"]):
        folder = gr.Dropdown(
            label="Dataset folder", choices=subfolders(host.dataset_dir()), allow_custom_value=True, scale=4,
            info=f"a folder under {host.dataset_dir()}, or type a path", elem_id="sdtrain_dataset_folder",
            elem_classes=field_classes("train_data_dir"),
        )  # fmt: skip
        refresh_folders = gr.Button("↻", elem_classes=["sdtrain-tool"], scale=0, min_width=40)
        load = gr.Button("Load", variant="primary", scale=1, elem_id="sdtrain_dataset_load")
    with gr.Accordion("Upload images or a zip into a new folder", open=False, elem_id="sdtrain_upload"), gr.Row():
        files = gr.File(label="Images, caption files or zip", file_count="multiple", scale=3)
        with gr.Column(scale=1):
            new_name = gr.Textbox(label="New folder name", placeholder="my-character")
            upload_button = gr.Button("Upload")
    with gr.Row():
        lora_name = gr.Textbox(label="LoRA name", placeholder="my-character", elem_id="sdtrain_lora_name")
        trigger_word = gr.Textbox(
            label="Trigger word", placeholder="sks", elem_id="sdtrain_trigger_word",
            info="the word that calls up your subject; 'Add trigger word' puts it first in every tag file",
        )  # fmt: skip
    with gr.Row():
        with gr.Column(variant="panel"):
            blip = gr.Dropdown(label="BLIP model", choices=blip_choices(host), value=blip_choices(host)[0],
                               allow_custom_value=True, elem_id="sdtrain_blip",
                               elem_classes=field_classes("caption_weights"))  # fmt: skip
            with gr.Row():
                beam = gr.Checkbox(label="Beam search", value=True)
                overwrite_captions = gr.Checkbox(label="Overwrite existing captions", value=False)
            with gr.Accordion("Caption options", open=False):
                caption_batch = gr.Number(
                    label="Batch size", value=1, precision=0, elem_classes=field_classes("batch_size")
                )
                num_beams = gr.Number(label="Beams", value=3, precision=0, elem_classes=field_classes("num_beams"))
                top_p = gr.Slider(
                    label="top_p (sampling)",
                    minimum=0,
                    maximum=1,
                    value=0.9,
                    step=0.05,
                    elem_classes=field_classes("top_p"),
                )
                min_length = gr.Number(
                    label="Min length", value=5, precision=0, elem_classes=field_classes("min_length")
                )
                max_length = gr.Number(
                    label="Max length", value=75, precision=0, elem_classes=field_classes("max_length")
                )
            caption_button = gr.Button("Caption (BLIP)", variant="primary", elem_id="sdtrain_caption")
        with gr.Column(variant="panel"):
            tagger = gr.Dropdown(label="WD14 tagger", choices=tagger_choices(host), value=tagger_choices(host)[0],
                                 allow_custom_value=True, elem_id="sdtrain_tagger",
                                 elem_classes=field_classes("model_dir", "repo_id"))  # fmt: skip
            with gr.Row():
                thresh = gr.Slider(
                    label="Threshold",
                    minimum=0.05,
                    maximum=0.95,
                    value=0.35,
                    step=0.05,
                    elem_classes=field_classes("thresh"),
                )
                underscores = gr.Checkbox(label="Spaces for underscores", value=True)
            with gr.Accordion("Tag options", open=False):
                existing = gr.Radio(["keep", "append", "overwrite"], value="keep", label="Existing tag files")
                character_threshold = gr.Number(
                    label="Character threshold (empty: the threshold)",
                    value=None,
                    elem_classes=field_classes("character_threshold"),
                )
                undesired = gr.Textbox(
                    label="Never write these tags (comma-separated)", elem_classes=field_classes("undesired_tags")
                )
                rating = gr.Checkbox(label="Rating tag first", value=False)
            tag_button = gr.Button("Tag (WD14)", variant="primary", elem_id="sdtrain_tag")
    message = gr.HTML(elem_id="sdtrain_dataset_message")

    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                query = gr.Textbox(label="Filter by tags (comma-separated) or caption words", scale=3)
                untagged = gr.Checkbox(label="Only without caption or tags", value=False, scale=1)
            gallery = gr.Gallery(label="Images", columns=6, height=430, allow_preview=False,
                                 elem_id="sdtrain_gallery")  # fmt: skip
            with gr.Row():
                prev_page = gr.Button("◀ Page", scale=0, min_width=80)
                page = gr.Number(label="Page", value=1, precision=0, scale=0, min_width=80)
                next_page = gr.Button("Page ▶", scale=0, min_width=80)
                shown = gr.Markdown(elem_id="sdtrain_shown")
        with gr.Column(scale=2, variant="panel"):
            preview = gr.Image(label="Selected image", type="filepath", interactive=False, height=220)
            current = gr.Textbox(label="File", interactive=False, elem_id="sdtrain_current")
            caption_box = gr.Textbox(label="Caption (.caption)", lines=3, elem_id="sdtrain_caption_box")
            tags_box = gr.Textbox(label="Tags (.txt, comma-separated)", lines=3, elem_id="sdtrain_tags_box")
            with gr.Row():
                prev_image = gr.Button("◀")
                save = gr.Button("Save", variant="primary", elem_id="sdtrain_save_image")
                next_image = gr.Button("▶")
            edit_message = gr.HTML(elem_id="sdtrain_edit_message")
    state = gr.State({"paths": [], "filtered": []})
    selected = gr.State("")

    with gr.Accordion("Bulk edit tags (applies to the filtered images)", open=False, elem_id="sdtrain_bulk"):
        with gr.Row():
            operation = gr.Radio(list(editing.BULK_OPERATIONS), value="add to front", label="Operation")
            bulk_tag = gr.Textbox(label="Tag", elem_id="sdtrain_bulk_tag")
            replacement = gr.Textbox(label="Replace with (for 'replace')")
        with gr.Row():
            add_trigger = gr.Button("Add trigger word to front")
            bulk_preview = gr.Button("Preview")
            bulk_apply = gr.Button("Apply", variant="primary", elem_id="sdtrain_bulk_apply")
        bulk_message = gr.HTML(elem_id="sdtrain_bulk_message")

    with gr.Accordion("Health report", open=False, elem_id="sdtrain_health"):
        report_button = gr.Button("Check the dataset", elem_id="sdtrain_report")
        with gr.Row():
            report_text = gr.Textbox(
                label="Report", lines=14, interactive=False, scale=3, elem_id="sdtrain_report_text"
            )
            histogram = gr.Image(label="Buckets", interactive=False, scale=2, elem_id="sdtrain_report_histogram")
        problems = gr.Dataframe(headers=["image", "problem"], label="Images that need a look", interactive=False)

    filter_inputs = [folder, query, untagged, page]
    gallery_outputs = [gallery, state, shown, page, message]

    def refresh(folder_value, query_value, untagged_value, page_value):
        return show_page(host, folder_value, query_value, untagged_value, page_value)

    refresh_folders.click(lambda: gr.update(choices=subfolders(host.dataset_dir())), None, folder)
    for event in (load.click, folder.select, query.submit, untagged.change, page.submit):
        event(refresh, filter_inputs, gallery_outputs)
    prev_page.click(lambda f, q, u, p: refresh(f, q, u, (p or 1) - 1), filter_inputs, gallery_outputs)
    next_page.click(lambda f, q, u, p: refresh(f, q, u, (p or 1) + 1), filter_inputs, gallery_outputs)
    upload_button.click(lambda f, n: upload(host, f, n), [files, new_name], [folder, message]).then(
        refresh, filter_inputs, gallery_outputs
    )
    editor = [preview, current, caption_box, tags_box, selected]
    gallery.select(select_image, [state], editor)
    prev_image.click(lambda s, c: step_image(s, c, -1), [state, selected], editor)
    next_image.click(lambda s, c: step_image(s, c, 1), [state, selected], editor)
    save.click(save_image_texts, [selected, caption_box, tags_box], [edit_message]).then(
        refresh, filter_inputs, gallery_outputs
    )
    bulk_inputs = [state, operation, bulk_tag, replacement]
    add_trigger.click(lambda t: ("add to front", t), [trigger_word], [operation, bulk_tag]).then(
        preview_bulk, bulk_inputs, [bulk_message]
    )
    bulk_preview.click(preview_bulk, bulk_inputs, [bulk_message])
    bulk_apply.click(apply_bulk, bulk_inputs, [bulk_message]).then(refresh, filter_inputs, gallery_outputs).then(
        lambda c: _editor_values(Path(c)) if c else [gr.update()] * 5, [selected], editor
    )

    caption_button.click(
        lambda *a: start_caption(host, *a),
        [folder, blip, beam, overwrite_captions, caption_batch, num_beams, top_p, min_length, max_length],
        [message],
    )
    tag_button.click(
        lambda *a: start_tag(host, *a),
        [folder, tagger, thresh, underscores, existing, character_threshold, undesired, rating],
        [message],
    )
    report_button.click(lambda f: start_report(host, f), [folder], [message])
    folder.change(lambda f: gr.update(value=Path(f).name if f else ""), [folder], [lora_name])

    return DatasetControls(
        folder, lora_name, trigger_word, refresh, gallery_outputs, filter_inputs, message,
        [report_text, histogram, problems], [blip, tagger],
    )  # fmt: skip


def report_values(result: dict | None):
    """The finished report job's outputs for the Health report panel."""
    if not result:
        return gr.update(), gr.update(), gr.update()
    problems = [[Path(k).name, v] for k, v in result.get("problems", {}).items()] or [["", "none found"]]
    return result.get("summary", ""), result.get("histogram"), problems
