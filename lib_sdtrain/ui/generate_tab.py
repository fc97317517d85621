"""4. Generate (standalone app only; in the WebUI, txt2img is the place): try a trained LoRA with diffusers,
txt2img or img2img, at a chosen weight, against the same seed without it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from lib_sdtrain.generate.pipeline import SAMPLERS
from lib_sdtrain.models import discovery
from lib_sdtrain.ui.common import error_for, message_html

if TYPE_CHECKING:
    from lib_sdtrain.host.types import Host

NO_LORA = "(none)"
_generator = None


def generator():
    """One Generator for the app: it keeps the last model loaded between clicks."""
    global _generator
    if _generator is None:
        from lib_sdtrain.generate import Generator

        _generator = Generator()
    return _generator


def lora_choices(host: Host) -> list[str]:
    return [NO_LORA, *(str(p) for p in discovery.lora_files([host.output_dir(), host.lora_dir()]))]


def generate(host: Host, model, lora, weight, prompt, negative, sampler, steps, cfg, width, height, seed, init_image,
             strength, compare):  # fmt: skip
    """Images for the gallery: with the LoRA, and (compare) the same seed without it."""
    from lib_sdtrain.generate import GenerationRequest

    if not model:
        return [], message_html("Choose a base model.", "error")
    try:
        from lib_sdtrain.jobs.access import check_value
        from lib_sdtrain.utils.path_kinds import PathKind

        check_value("pretrained_model_name_or_path", str(model), PathKind.MODEL)  # --listen: only SD-Train's folders
        lora_path = None
        if lora and lora != NO_LORA:
            check_value("LoRA", str(lora), PathKind.READ_FILE)
            lora_path = str(lora)
        request = GenerationRequest(
            model=str(model), prompt=prompt or "", negative_prompt=negative or "", sampler=sampler,
            steps=int(steps), cfg_scale=float(cfg),
            width=int(width), height=int(height), seed=int(seed), lora_path=lora_path, lora_weight=float(weight),
        )  # fmt: skip
        with host.gpu_lock(wait=False):
            images = _render(request, init_image, strength)
            captions = [f"with LoRA {weight}" if lora_path else "without LoRA"]
            if compare and lora_path:
                request.lora_path = None
                images += _render(request, init_image, strength)
                captions.append("without LoRA (same seed)")
    except Exception as e:
        return [], error_for(e)
    return list(zip(images, captions, strict=True)), message_html(f"Seed {int(seed)}.", "ok")


def _render(request, init_image, strength):
    if init_image is not None:
        return generator().img2img(request, init_image, float(strength))
    return generator().txt2img(request)


def build(host: Host, model_choices: list[str]) -> tuple[gr.Dropdown, gr.Dropdown]:
    """Returns the model and LoRA dropdowns (refreshed when a page loads)."""
    with gr.Row():
        model = gr.Dropdown(
            label="Base model", choices=model_choices, value=model_choices[0] if model_choices else None,
            allow_custom_value=True, scale=3, elem_id="sdtrain_gen_model",
        )  # fmt: skip
        lora = gr.Dropdown(label="LoRA", choices=lora_choices(host), value=NO_LORA, allow_custom_value=True, scale=3,
                           elem_id="sdtrain_gen_lora")  # fmt: skip
        refresh = gr.Button("↻", scale=0, min_width=40, elem_id="sdtrain_gen_refresh")
        weight = gr.Slider(label="LoRA weight", minimum=-1, maximum=2, value=0.8, step=0.05, scale=2)
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id="sdtrain_gen_prompt")
            negative = gr.Textbox(label="Negative prompt", lines=1)
            with gr.Row():
                sampler = gr.Dropdown(label="Sampler", choices=list(SAMPLERS), value="euler")
                steps = gr.Slider(label="Steps", minimum=1, maximum=100, value=20, step=1)
                cfg = gr.Slider(label="CFG scale", minimum=1, maximum=20, value=7, step=0.5)
                seed = gr.Number(label="Seed", value=1, precision=0)
            with gr.Row():
                width = gr.Slider(label="Width", minimum=64, maximum=1024, value=512, step=8)
                height = gr.Slider(label="Height", minimum=64, maximum=1024, value=512, step=8)
                compare = gr.Checkbox(label="Also without the LoRA (same seed)", value=True)
            with gr.Accordion("img2img", open=False):
                init_image = gr.Image(label="Start from this image", type="pil")
                strength = gr.Slider(label="Denoising strength", minimum=0, maximum=1, value=0.6, step=0.05)
            button = gr.Button("Generate", variant="primary", elem_id="sdtrain_generate")
            message = gr.HTML(elem_id="sdtrain_gen_message")
        with gr.Column(scale=2):
            gallery = gr.Gallery(label="Images", columns=2, height=420, elem_id="sdtrain_gen_gallery")
    refresh.click(lambda: gr.update(choices=lora_choices(host)), None, [lora])
    button.click(
        lambda *a: generate(host, *a),
        [
            model,
            lora,
            weight,
            prompt,
            negative,
            sampler,
            steps,
            cfg,
            width,
            height,
            seed,
            init_image,
            strength,
            compare,
        ],
        [gallery, message],
    )
    return model, lora
