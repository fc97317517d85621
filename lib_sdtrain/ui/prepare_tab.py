"""2. Prepare: merge captions and tags into meta_clean.json, sort the images into aspect-ratio buckets and cache
their VAE latents (meta_lat.json + .npz), then show the bucket histogram and table. One job: `prepare`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import gradio as gr

from lib_sdtrain.ui.common import field_classes, start_job
from lib_sdtrain.ui.dataset_tab import folder_path

if TYPE_CHECKING:
    from lib_sdtrain.host.types import Host


@dataclass
class PrepareControls:
    model: gr.Dropdown
    outputs: list
    bucket_fields: list  # resolution, smallest and largest side, step


def start_prepare(host: Host, folder, model, resolution, batch_size, precision, flip_aug, clean, skip_existing,
                  min_reso, max_reso, steps, no_upscale) -> str:  # fmt: skip
    def options():
        return {
            "train_data_dir": str(folder_path(host, folder)), "model": model, "max_resolution": resolution,
            "batch_size": batch_size, "mixed_precision": precision, "flip_aug": flip_aug, "clean_caption": clean,
            "skip_existing": skip_existing, "min_bucket_reso": min_reso, "max_bucket_reso": max_reso,
            "bucket_reso_steps": steps, "bucket_no_upscale": no_upscale,
        }  # fmt: skip

    return start_job("prepare", options, "It writes meta_clean.json, then meta_lat.json and the latents.")


def result_values(result: dict | None):
    """(histogram, bucket table, summary) of a finished prepare job."""
    if not result:
        return gr.update(), gr.update(), gr.update()
    rows = [[bucket, count] for bucket, count in result.get("buckets", {}).items()]
    merge = result.get("merge", {})
    summary = result.get("summary", "")
    if merge:
        summary = (
            f"meta_clean.json: {merge.get('entries')} entries, {merge.get('captions')} captions, "
            f"{merge.get('tags')} tag files\nlatents: {result.get('encoded')} encoded, "
            f"{result.get('already_cached')} already cached\n\n{summary}"
        )
    return result.get("histogram"), rows, summary


def build(host: Host, folder: gr.Dropdown, model_choices: list[str]) -> PrepareControls:
    gr.Markdown(
        "Merges each image's caption (`.caption`) and tags (`.txt`) into `meta_clean.json`, sorts the images into "
        "aspect-ratio buckets and caches their VAE latents, as kohya's `prepare_buckets_latents.py` does.",
        elem_classes=["sdtrain-help"],
    )
    with gr.Row():
        model = gr.Dropdown(
            label="Model (its VAE encodes the latents)", choices=model_choices,
            value=model_choices[0] if model_choices else None, allow_custom_value=True, scale=3,
            elem_id="sdtrain_prepare_model", elem_classes=field_classes("model"),
        )  # fmt: skip
        resolution = gr.Textbox(
            label="Max resolution (W,H)",
            value="512,512",
            scale=1,
            elem_id="sdtrain_prepare_reso",
            elem_classes=field_classes("max_resolution"),
        )
        precision = gr.Radio(["no", "fp16", "bf16"], value="no", label="VAE precision", scale=1)
    with gr.Row():
        batch_size = gr.Number(label="Batch size", value=4, precision=0, elem_classes=field_classes("batch_size"))
        flip_aug = gr.Checkbox(label="Also cache flipped latents (flip_aug)", value=False)
        clean = gr.Checkbox(label="Clean captions and tags (kohya's rules)", value=False)
        skip_existing = gr.Checkbox(label="Keep latents that are already cached", value=True)
    with gr.Accordion("Bucket options", open=False), gr.Row():
        min_reso = gr.Number(
            label="Smallest bucket side", value=256, precision=0, elem_classes=field_classes("min_bucket_reso")
        )
        max_reso = gr.Number(
            label="Largest bucket side", value=1024, precision=0, elem_classes=field_classes("max_bucket_reso")
        )
        steps = gr.Number(label="Bucket step", value=64, precision=0, elem_classes=field_classes("bucket_reso_steps"))
        no_upscale = gr.Checkbox(label="Never enlarge (bucket_no_upscale)", value=False)
    button = gr.Button("Prepare the dataset", variant="primary", elem_id="sdtrain_prepare")
    message = gr.HTML(elem_id="sdtrain_prepare_message")
    with gr.Row():
        histogram = gr.Image(label="Bucket histogram", interactive=False, elem_id="sdtrain_histogram")
        with gr.Column():
            table = gr.Dataframe(headers=["bucket", "images"], label="Buckets", interactive=False,
                                 elem_id="sdtrain_bucket_table")  # fmt: skip
            summary = gr.Textbox(label="Summary", lines=10, interactive=False)
    button.click(
        lambda *a: start_prepare(host, *a),
        [folder, model, resolution, batch_size, precision, flip_aug, clean, skip_existing, min_reso, max_reso,
         steps, no_upscale],
        [message],
    )  # fmt: skip
    return PrepareControls(model, [histogram, table, summary], [resolution, min_reso, max_reso, steps])
