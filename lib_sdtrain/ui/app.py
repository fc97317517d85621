"""The SD-Train UI, built once as a gr.Blocks for both hosts: the WebUI's SD-Train tab and the standalone app.

    blocks = build_ui(host.current())

It holds no pipeline logic: every button either edits a dataset's text files (lib_sdtrain.dataset.editing) or
starts a stage through the job runner, and the page polls the runner for what is running.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from lib_sdtrain import __version__
from lib_sdtrain.jobs import runner
from lib_sdtrain.ui import dataset_tab, monitor, prepare_tab, train_tab
from lib_sdtrain.ui.common import error_for, message_html, subfolders

if TYPE_CHECKING:
    from lib_sdtrain.host.types import Host

ELEM_ID = "sdtrain"
# The demo set's images are 96-128 px: these buckets (as the demo-tiny preset) upscale nothing.
DEMO_BUCKETS = ("96,96", 64, 128, 16)
DEMO_PRESET = "demo-tiny"
DEMO_PROMPTS = "sks, creature --w 96 --h 96 --s 8 --d 1\ncreature, meadow --w 96 --h 96 --s 8 --d 2"


def build_ui(host: Host, css: str | None = None) -> gr.Blocks:
    model_choices = host.base_model_choices()
    with gr.Blocks(analytics_enabled=False, elem_id=ELEM_ID, title="SD-Train", css=css) as blocks:
        with gr.Row(elem_classes=["sdtrain-header"], equal_height=False):
            header = gr.HTML(elem_id="sdtrain_status", scale=5)
            cancel = gr.Button(
                "Cancel job", variant="stop", size="sm", scale=0, min_width=120, elem_id="sdtrain_cancel_job"
            )
        header_message = gr.HTML(elem_id="sdtrain_header_message")
        demo_controls = _demo_notice(host, model_choices)
        with gr.Tabs(elem_id="sdtrain_tabs"):
            with gr.Tab("1. Dataset", elem_id="sdtrain_tab_dataset"):
                dataset = dataset_tab.build(host)
            with gr.Tab("2. Prepare", elem_id="sdtrain_tab_prepare"):
                prepare = prepare_tab.build(host, dataset.folder, model_choices)
            with gr.Tab("3. Train", elem_id="sdtrain_tab_train"):
                train = train_tab.build(host, dataset.folder, dataset.lora_name, dataset.trigger_word, model_choices)
            generate_models: list = []
            if not host.is_webui():
                with gr.Tab("4. Generate", elem_id="sdtrain_tab_generate"):
                    from lib_sdtrain.ui import generate_tab

                    generate_models = list(generate_tab.build(host, model_choices))
        gr.Markdown(f"SD-Train {__version__}", elem_classes=["sdtrain-footer"])

        finished = gr.Textbox(visible=False, elem_id="sdtrain_finished")
        seen = gr.State({})
        # "hidden": a poll every second must not make every output it updates flash as "pending".
        blocks.load(
            monitor.poll, [seen], [header, *train.monitor, finished, seen], every=monitor.POLL_SECONDS,
            show_progress="hidden",
        )  # fmt: skip
        cancel.click(train_tab._cancel_message, None, [header_message])

        # The page is built once per server; what is on disk changes. Each page load lists it afresh.
        model_fields = [prepare.model, train.form.components["pretrained_model_name_or_path"]]
        model_fields += generate_models[:1]
        choice_fields = [dataset.folder, *dataset.models, *model_fields, *generate_models[1:]]
        notice_fields = [demo_controls[1]]

        def on_load(*current):
            models = host.base_model_choices()
            lists = [subfolders(host.dataset_dir()), dataset_tab.blip_choices(host), dataset_tab.tagger_choices(host)]
            lists += [models] * len(model_fields)
            if generate_models:
                from lib_sdtrain.ui import generate_tab

                lists.append(generate_tab.lora_choices(host))
            updates = [
                gr.update(choices=choices, value=value if value or not choices else choices[0])
                for choices, value in zip(lists, current, strict=True)
            ]
            updates[0] = gr.update(choices=lists[0])  # the dataset stays unchosen until the user picks one
            return updates + [_notice_text(host, models) for _ in notice_fields]

        blocks.load(on_load, choice_fields, choice_fields + notice_fields)
        blocks.load(train.restore, None, train.restore_outputs)

        def after_job(job_id):
            """A job just finished: show what it changed (results, and a new LoRA in Generate's list)."""
            job = runner().get(job_id) if job_id else None
            prepared = [gr.update()] * len(prepare.outputs)
            reported = [gr.update()] * len(dataset.report_outputs)
            loras = [gr.update()] * len(generate_models[1:])
            if job is not None and job.result is not None:
                if job.kind == "prepare":
                    prepared = list(prepare_tab.result_values(job.result))
                elif job.kind == "report":
                    reported = list(dataset_tab.report_values(job.result))
            if job is not None and job.kind == "train" and loras:
                from lib_sdtrain.ui import generate_tab

                loras = [gr.update(choices=generate_tab.lora_choices(host))]
            return [*prepared, *reported, *loras]

        finished.change(after_job, [finished], [*prepare.outputs, *dataset.report_outputs, *generate_models[1:]]).then(
            dataset.refresh, dataset.filter_inputs, dataset.gallery_outputs
        )
        button, notice = demo_controls
        button.click(
            lambda: _make_demo(host), None,
            [notice, dataset.folder, prepare.model, train.form.components["pretrained_model_name_or_path"],
             *dataset.models, *prepare.bucket_fields, train.preset, train.prompts],
        ).then(dataset.refresh, dataset.filter_inputs, dataset.gallery_outputs)  # fmt: skip
    return blocks


def _notice_text(host: Host, model_choices: list[str]) -> str:
    """Where the models go (they are downloaded on first use only where the hub can be reached), and the demo."""
    folders = (
        f"Captioning and tagging download BLIP and the WD14 tagger from the Hugging Face hub on first use; offline, "
        f"put a BLIP folder (transformers layout) or a tagger folder (`model.onnx` + `selected_tags.csv`) into "
        f"`{host.models_dir()}` and pick it from the list."
    )
    demo = (
        "Or make the demo: tiny random-weight models (SD, BLIP, WD14; their images are not pictures) and a small "
        "drawn dataset, to try caption → tag → prepare → train on a CPU in a few minutes, offline."
    )
    if host.is_webui():
        base = (
            "Training starts from the checkpoint the WebUI has loaded, or any checkpoint in its list; a diffusers "
            f"folder goes into `{host.models_dir()}`."
        )
        return f"{base} {folders} {demo}"
    if not model_choices:
        return (
            f"**No Stable Diffusion model found.** Put an SD 1.x/2.x checkpoint (`.safetensors`) into "
            f"`{host.checkpoints_dir()}`, or a diffusers folder into `{host.models_dir()}`, then reload this page. "
            f"{folders} {demo}"
        )
    return f"{folders} Want to try the workflow first? The demo makes tiny random-weight models and a small dataset."


def _demo_notice(host: Host, model_choices: list[str]):
    """Where the models go, and the demo set: open when the standalone app has no model at all."""
    text = _notice_text(host, model_choices)
    open_now = not model_choices and not host.is_webui()
    with gr.Accordion("Getting started: models and the demo", open=open_now, elem_id="sdtrain_getting_started"):
        notice = gr.Markdown(text, elem_id="sdtrain_demo_notice")
        button = gr.Button("Make the demo models and dataset", elem_id="sdtrain_make_demo")
    return button, notice


def _make_demo(host: Host):
    from lib_sdtrain.demo.make import make_demo

    try:
        paths = make_demo(host.models_dir(), host.dataset_dir())
    except Exception as e:
        return [error_for(e), *([gr.update()] * 11)]
    models = host.base_model_choices()
    sd = str(paths.sd_model)
    text = (
        f"Demo ready: model `{sd}`, BLIP `{paths.blip}`, tagger `{paths.tagger}`, images in `{paths.dataset}`. "
        "The demo dataset is selected: caption and tag it below, then Prepare, and in Train apply the preset "
        f"'{DEMO_PRESET}' and start."
    )
    return [
        message_html(text, "ok"),
        gr.update(choices=subfolders(host.dataset_dir()), value=paths.dataset.name),
        gr.update(choices=models, value=sd),
        gr.update(choices=models, value=sd),
        gr.update(choices=dataset_tab.blip_choices(host), value=str(paths.blip)),
        gr.update(choices=dataset_tab.tagger_choices(host), value=str(paths.tagger)),
        *DEMO_BUCKETS,
        gr.update(value=DEMO_PRESET),
        DEMO_PROMPTS,
    ]
