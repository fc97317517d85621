"""3. Train: a preset, the ten or so settings most runs change, every other option under "Advanced" (generated from
the option schema, searchable), the run's TOML, Start / Cancel / Resume, and the live run: progress, loss chart,
samples, log and the files it wrote."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from lib_sdtrain.jobs import runner
from lib_sdtrain.train import presets
from lib_sdtrain.train.options import CATEGORIES, OPTIONS, TRAINING_KINDS, Option
from lib_sdtrain.train.run import list_run_configs, list_states
from lib_sdtrain.train.toml_writer import config_to_toml
from lib_sdtrain.ui.common import error_for, field_classes, message_html, resolve_folder
from lib_sdtrain.ui.option_form import OptionForm
from lib_sdtrain.utils.status import Status

MODES = ("LoRA", "LoCon (LoRA + 3x3 convolutions)", "Full fine-tune")
MODE_KINDS = dict(zip(MODES, TRAINING_KINDS, strict=True))
LOCON_DEFAULT_DIM, LOCON_DEFAULT_ALPHA = 8, 1.0
# Fields the form lays out itself: the mode radio sets network_module; the rest are placed first, in this order.
MODE_KEYS = ("network_module",)
LEADING = ("pretrained_model_name_or_path", "train_data_dir", "output_name", "trigger_word")


@dataclass
class TrainControls:
    form: OptionForm
    monitor: list  # progress, loss chart, samples, log, result
    preset: gr.Dropdown
    prompts: gr.Textbox
    restore: Any  # () -> updates of `restore_outputs`: the last run's settings back in the form
    restore_outputs: list


def user_preset_dir(host) -> Path:
    return host.output_dir() / "presets"


def preset_names(host) -> list[str]:
    return [p.name for p in presets.list_presets(user_preset_dir(host))]


def form_to_values(host, form: OptionForm, mode: str, prompts: str, raw: list[Any]) -> dict[str, Any]:
    """The form as flat kohya keys, the way `sdtrain train` and the API take them."""
    values = form.values(raw)
    if mode == MODES[2]:
        values.pop("network_module", None)
        values.pop("conv_dim", None)
    else:
        values["network_module"] = "networks.lora"
        if mode == MODES[1]:
            values.setdefault("conv_dim", LOCON_DEFAULT_DIM)
            values.setdefault("conv_alpha", LOCON_DEFAULT_ALPHA)
        else:
            values.pop("conv_dim", None)
            values.pop("conv_alpha", None)
    data_dir = values.get("train_data_dir")
    if data_dir:
        values["train_data_dir"] = str(resolve_folder(str(data_dir), host.dataset_dir()))
        prepared = Path(values["train_data_dir"]) / "meta_lat.json"
        if "in_json" not in values and prepared.is_file():
            values["in_json"] = str(prepared)  # Prepare's output: cached latents, merged captions and tags
    if prompts and prompts.strip():
        from lib_sdtrain.train.sampling import write_prompt_file

        folder = host.check_path_allowed(values.get("output_dir") or host.output_dir(), "output folder")
        values["sample_prompts"] = str(write_prompt_file(folder, values.get("output_name") or "sample", prompts))
    return values


def applies_to(option: Option, mode: str) -> bool:
    """Whether an option means something for what is being trained (the form hides the others)."""
    return MODE_KINDS[mode] in option.trains


def mode_of(values: dict[str, Any]) -> str:
    if not values.get("network_module"):
        return MODES[2]
    locon_args = any(str(arg).replace(" ", "").startswith("conv_dim=") for arg in values.get("network_args") or [])
    return MODES[1] if values.get("conv_dim") or locon_args else MODES[0]


# --- the run's monitor -----------------------------------------------------------------------------------------------


def loss_frame(losses: list) -> pd.DataFrame:
    """Loss per step, and its moving average (what users read the trend from)."""
    if not losses:
        return pd.DataFrame({"step": [], "loss": [], "series": []})
    steps = [s for s, _ in losses]
    values = [v for _, v in losses]
    window = max(1, len(values) // 20)
    average = [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
               for i in range(len(values))]  # fmt: skip
    return pd.DataFrame(
        {"step": steps * 2, "loss": values + average, "series": ["loss"] * len(steps) + ["average"] * len(steps)}
    )


def result_markdown(snapshot: dict[str, Any] | None) -> str:
    if not snapshot:
        return ""
    if snapshot["status"] == Status.RUNNING:
        return ""
    result = snapshot.get("result") or {}
    if snapshot.get("error"):
        return f"**{snapshot['status'].capitalize()}.** {snapshot['error']}"
    lines = [f"**Finished** after {result.get('steps')} steps."]
    for label, key in (("Model", "output"), ("Resumable state", "state_dir"), ("Run config", "config")):
        if result.get(key):
            lines.append(f"- {label}: `{result[key]}`")
    if result.get("registered"):
        lines.append(f"- Added to the Lora/checkpoint folder: `{result['registered']}`")
    if result.get("prompt"):
        lines.append(f"- Use it in a prompt: `{result['prompt']}`")
    return "\n".join(lines)


# --- layout ----------------------------------------------------------------------------------------------------------


def build(host, dataset_folder, lora_name, trigger_word, model_choices: list[str]) -> TrainControls:
    form = OptionForm([o for o in OPTIONS if o.name not in MODE_KEYS])
    by_name = {o.name: o for o in form.options}

    with gr.Row():
        preset = gr.Dropdown(label="Preset", choices=preset_names(host), value=None, scale=3, elem_id="sdtrain_preset")
        apply_preset = gr.Button("Apply preset", scale=1, elem_id="sdtrain_apply_preset")
        mode = gr.Radio(list(MODES), value=MODES[0], label="What to train", scale=3, elem_id="sdtrain_mode")
    with gr.Accordion("What this preset sets", open=False):
        preset_table = gr.Dataframe(headers=["setting", "value", "what it does"], interactive=False, wrap=True)

    with gr.Group(elem_classes=["sdtrain-common"]):
        with gr.Row():
            base = by_name["pretrained_model_name_or_path"]
            form.components[base.name] = gr.Dropdown(  # the host's models to pick from, or a typed path / hub id
                choices=model_choices, value=model_choices[0] if model_choices else "", allow_custom_value=True,
                label=base.name, info=base.help, scale=3, elem_id=f"sdtrain_opt_{base.name}",
                elem_classes=field_classes(base.name),
            )  # fmt: skip
        common = [o for o in form.options if o.common and o.name not in LEADING]
        with gr.Row():
            for name in LEADING[1:]:
                form.build(by_name[name])
        initial = {"output_dir": str(host.output_dir())}  # not the schema's "output", relative to the server
        for start in range(0, len(common), 4):
            with gr.Row():
                for option in common[start : start + 4]:
                    form.build(option, **({"value": initial[option.name]} if option.name in initial else {}))
        prompts = gr.Textbox(
            label="Sample prompts (one per line, kohya's syntax: a prompt --n negative --w 512 --h 512 --d seed)",
            lines=2, elem_id="sdtrain_sample_prompts", elem_classes=field_classes("sample_prompts"),
        )  # fmt: skip

    with gr.Accordion("Advanced: every other option", open=False, elem_id="sdtrain_advanced"):
        with gr.Row():
            search = gr.Textbox(label="Search options", placeholder="e.g. snr, bucket, scheduler", scale=3,
                                elem_id="sdtrain_option_search")  # fmt: skip
            changed_only = gr.Checkbox(label="Only options changed from their defaults", value=False, scale=1)
        for category, (title, _table) in CATEGORIES.items():
            options = [o for o in form.options if o.category == category and o.name not in form.components]
            if not options:
                continue
            gr.Markdown(f"**{title}**", elem_classes=["sdtrain-category"])
            for start in range(0, len(options), 3):
                with gr.Row():
                    for option in options[start : start + 3]:
                        form.build(option, visible=applies_to(option, MODES[0]))

    with gr.Accordion("Config: TOML, presets, previous runs", open=False, elem_id="sdtrain_config"):
        toml_view = gr.Code(
            elem_id="sdtrain_toml",
            label="The run's config (kohya keys; only changed values)",
            language=None,
            interactive=False,
        )
        with gr.Row():
            show_toml = gr.Button("Show TOML")
            preset_name = gr.Textbox(label="Save as preset named", scale=2, elem_id="sdtrain_preset_name")
            save_preset = gr.Button("Save preset", elem_id="sdtrain_save_preset")
        with gr.Row():
            previous = gr.Dropdown(label="Load a previous run's config", choices=[], allow_custom_value=True, scale=3,
                                   elem_id="sdtrain_previous")  # fmt: skip
            refresh_previous = gr.Button("↻", scale=0, min_width=40, elem_id="sdtrain_refresh_previous")
            load_previous = gr.Button("Load", scale=1, elem_id="sdtrain_load_previous")
        config_message = gr.HTML(elem_id="sdtrain_config_message")

    with gr.Row():
        check = gr.Button("Check", elem_id="sdtrain_check")
        start = gr.Button("Start training", variant="primary", elem_id="sdtrain_start")
        cancel = gr.Button("Cancel", variant="stop", elem_id="sdtrain_cancel")
        state = gr.Dropdown(label="Saved states of this output", choices=[], allow_custom_value=True,
                            elem_id="sdtrain_states")  # fmt: skip
        refresh_states = gr.Button("↻", scale=0, min_width=40, elem_id="sdtrain_refresh_states")
        resume = gr.Button("Resume", elem_id="sdtrain_resume")
    message = gr.HTML(elem_id="sdtrain_train_message")

    with gr.Row():
        with gr.Column(scale=3):
            progress = gr.HTML(elem_id="sdtrain_train_progress")
            loss_plot = gr.LinePlot(
                loss_frame([]), x="step", y="loss", color="series", title="Loss", height=260, width=520,
                tooltip=["step", "loss"], elem_id="sdtrain_loss_plot",
            )  # fmt: skip
        with gr.Column(scale=2):
            samples = gr.Gallery(label="Samples", columns=3, height=300, elem_id="sdtrain_samples")
    with gr.Row():
        log = gr.Textbox(label="Log", lines=8, max_lines=8, interactive=False, elem_id="sdtrain_log")
        result = gr.Markdown(elem_id="sdtrain_result")

    # --- events ---
    inputs = form.inputs
    all_inputs = [mode, prompts, *inputs]

    def values_of(mode_value, prompts_value, *raw):
        return form_to_values(host, form, mode_value, prompts_value, list(raw))

    def start_run(*args, resume_from: str | None = None):
        try:
            values = values_of(*args)
            if resume_from is not None:
                if not resume_from:
                    return message_html("Pick a saved state to resume from (🔄 lists them).", "error")
                values["resume"] = resume_from
            job = runner().start("train", values)
        except Exception as e:
            return error_for(e)
        return message_html(f"Started {job.title}: {values.get('output_name')} from {values.get('train_data_dir')}.",
                            "ok")  # fmt: skip

    def check_run(*args):
        """The same checks as Start, then what the run would do (images, buckets, steps), without starting it."""
        from lib_sdtrain.jobs import STAGES
        from lib_sdtrain.train.run import plan_text
        from lib_sdtrain.train.settings import load_config

        try:
            values = values_of(*args)
            STAGES["train"].check(dict(values))
            return message_html(plan_text(load_config(None, values)))
        except Exception as e:
            return error_for(e)

    check.click(check_run, all_inputs, [message])
    start.click(start_run, all_inputs, [message])
    resume.click(lambda s, *a: start_run(*a, resume_from=s or ""), [state, *all_inputs], [message])
    cancel.click(lambda: _cancel_message(), None, [message])

    def states_for(*args):
        values = form.values(list(args))
        try:
            folder = host.check_path_allowed(values.get("output_dir") or host.output_dir(), "output folder")
        except Exception:
            return gr.update(choices=[], value=None)
        found = list_states(folder, values.get("output_name") or "")
        choices = [str(p) for p in found]
        return gr.update(choices=choices, value=choices[0] if choices else None)

    refresh_states.click(states_for, inputs, [state])

    def preset_values(name):
        if not name:
            return [gr.update()] * (len(inputs) + 2)
        values = presets.load_preset(name, user_preset_dir(host))
        keep = {k for k in LEADING if k != "trigger_word"} | {"output_dir"}
        shown = {k: v for k, v in values.items() if k not in keep}
        rows = [list(r) for r in presets.describe_preset(values)]
        form_values = {k: v for k, v in shown.items() if k in form.components}
        updates = form.updates(form_values, reset=False)
        reset = [
            u if o.name in form_values or o.name in keep else form.updates({o.name: o.default})[0]
            for o, u in zip(form.built, updates, strict=True)
        ]
        return [gr.update(value=mode_of(values)), rows, *reset]

    preset.change(lambda n: [list(r) for r in presets.describe_preset(presets.load_preset(n, user_preset_dir(host)))]
                  if n else [], [preset], [preset_table])  # fmt: skip
    apply_preset.click(preset_values, [preset], [mode, preset_table, *inputs])

    def toml_of(*args):
        try:
            return config_to_toml(values_of(*args)), ""
        except Exception as e:
            return "", error_for(e)

    show_toml.click(toml_of, all_inputs, [toml_view, config_message])

    def save_as_preset(name, *args):
        from lib_sdtrain.jobs.access import check_values
        from lib_sdtrain.train.options import path_kinds

        try:
            values = values_of(*args)
            check_values(values, path_kinds())  # a preset names no folder SD-Train may not use
            path = presets.save_user_preset((name or "").strip(), values, user_preset_dir(host))
        except Exception as e:
            return gr.update(), error_for(e)
        return gr.update(choices=preset_names(host), value=path.stem), message_html(f"Saved {path}.", "ok")

    save_preset.click(save_as_preset, [preset_name, *all_inputs], [preset, config_message])

    def previous_runs():
        return gr.update(choices=[str(p) for p in list_run_configs(host.output_dir())])

    refresh_previous.click(previous_runs, None, [previous])

    def load_run(path):
        from lib_sdtrain.jobs.access import load_train_config
        from lib_sdtrain.train.config import config_values

        try:
            values = config_values(load_train_config(path, {}, str(host.output_dir())))
        except Exception as e:
            return [gr.update(), error_for(e), *([gr.update()] * len(inputs))]
        known = {k: v for k, v in values.items() if k in form.components}
        return [gr.update(value=mode_of(values)), message_html(f"Loaded {path}.", "ok"),
                *form.updates(known, reset=True)]  # fmt: skip

    load_previous.click(load_run, [previous], [mode, config_message, *inputs])

    search_inputs = [search, changed_only, mode, *inputs]
    for event in (search.change, changed_only.change, mode.change):
        event(lambda q, c, m, *raw: form.visibility(q, c, list(raw), lambda o: applies_to(o, m)), search_inputs, inputs)

    # The Dataset tab's choices flow into the run's settings.
    dataset_folder.change(lambda f: f or "", [dataset_folder], [form.components["train_data_dir"]])
    lora_name.change(lambda n: n or "", [lora_name], [form.components["output_name"]])
    trigger_word.change(lambda t: t or "", [trigger_word], [form.components["trigger_word"]])

    def restore_last_run():
        """A page (re)loaded while a training runs, or after one, shows that run's settings, not the defaults:
        a reload or a failed run never loses the form."""
        job = runner().current("train")
        if job is None:
            return [gr.update()] * (len(inputs) + 1)
        known = {k: v for k, v in job.options.items() if k in form.components}
        return [gr.update(value=mode_of(job.options)), *form.updates(known, reset=True)]

    return TrainControls(form, [progress, loss_plot, samples, log, result], preset, prompts, restore_last_run,
                         [mode, *inputs])  # fmt: skip


def _cancel_message() -> str:
    job = runner().cancel()
    if job is None or not job.running:
        return message_html("No job is running.")
    return message_html(f"Cancelling {job.title}: it stops at the next safe point and keeps what it saved.", "ok")
