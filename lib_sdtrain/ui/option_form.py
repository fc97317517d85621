"""Form fields generated from the training option schema (lib_sdtrain/train/options.py): the label is the kohya
key, the help text is the schema's, bool -> checkbox, choices -> dropdown, numbers -> number boxes, lists ->
one item per line. The same schema drives `sdtrain train --help` and the TOML checks, so the three agree."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from lib_sdtrain.train.options import Option
from lib_sdtrain.ui.common import field_classes


def _shown(value: Any) -> Any:
    return "" if value is None else str(value)


def make_component(option: Option, **kwargs: Any) -> gr.components.Component:
    value = kwargs.pop("value", option.default)
    common = {"label": option.name, "info": option.help, "elem_id": f"sdtrain_opt_{option.name}",
              "elem_classes": field_classes(option.name), **kwargs}  # fmt: skip
    if option.type is bool:
        return gr.Checkbox(value=bool(value), **common)
    if option.choices:
        choices = ([""] if option.optional else []) + [str(c) for c in option.choices]
        return gr.Dropdown(choices=choices, value=_shown(value), **common)
    if option.type in (int, float) and not option.optional:
        return gr.Number(value=value, precision=0 if option.type is int else None, **common)
    if option.type in (int, float):  # a number box cannot be empty: here empty means "not set", unlike 0
        return gr.Textbox(value=_shown(value), placeholder="empty: not set", **common)
    if option.type is list:
        return gr.Textbox(value="\n".join(map(str, value or [])), lines=2, **common)
    return gr.Textbox(value=value or "", **common)


def form_value(option: Option, value: Any) -> Any:
    """A field's value as the config takes it; None for an empty optional field (the default applies)."""
    if value is None or (isinstance(value, str) and not value.strip() and option.type is not str):
        return None
    if option.type is list:
        lines = value if isinstance(value, list | tuple) else str(value).splitlines()
        return [str(line).strip() for line in lines if str(line).strip()]
    if option.choices and option.type is int:
        return int(value)
    if option.type is str and option.optional and not str(value).strip():
        return None
    if option.type is float and isinstance(value, int | float):
        return float(value)
    return value


def field_update(option: Option, value: Any) -> dict:
    """The update that shows `value` (a config value) in the option's field."""
    if option.type is list:
        return gr.update(value="\n".join(map(str, value or [])))
    if option.type is bool:
        return gr.update(value=bool(value))
    if option.choices or option.type is str or option.optional:
        return gr.update(value=_shown(value))
    return gr.update(value=value)


class OptionForm:
    """Fields for a list of options, and the conversions between their values and a config's."""

    def __init__(self, options: list[Option]) -> None:
        self.options = options
        self.components: dict[str, gr.components.Component] = {}

    def build(self, option: Option, **kwargs: Any) -> gr.components.Component:
        component = make_component(option, **kwargs)
        self.components[option.name] = component
        return component

    @property
    def inputs(self) -> list[gr.components.Component]:
        return [self.components[o.name] for o in self.options if o.name in self.components]

    @property
    def built(self) -> list[Option]:
        return [o for o in self.options if o.name in self.components]

    def values(self, raw: list[Any]) -> dict[str, Any]:
        """{key: value} of the fields that hold a value (empty optional fields are left out)."""
        values = {}
        for option, value in zip(self.built, raw, strict=True):
            converted = form_value(option, value)
            if converted is not None:
                values[option.name] = converted
        return values

    def updates(self, values: dict[str, Any], reset: bool = False) -> list[dict]:
        """Updates showing `values`; other fields keep theirs, or go back to their defaults with `reset`."""
        return [
            field_update(o, values[o.name])
            if o.name in values
            else (field_update(o, o.default) if reset else gr.update())
            for o in self.built
        ]

    def visibility(
        self, query: str, changed_only: bool, raw: list[Any], applies: Callable[[Option], bool] = lambda o: True
    ) -> list[dict]:
        """Show the fields that apply (to what is being trained) whose key or help contains `query`, and that
        differ from the default when `changed_only`."""
        query = (query or "").strip().lower()
        updates = []
        for option, value in zip(self.built, raw, strict=True):
            matches = applies(option) and (not query or query in option.name.lower() or query in option.help.lower())
            if changed_only:
                matches = matches and form_value(option, value) not in (None, option.default)
            updates.append(gr.update(visible=matches))
        return updates
