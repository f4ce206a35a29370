"""The action_cls options shown in the Train tab: one table row per option, widgets and arguments built from it."""

from dataclasses import MISSING, dataclass, fields
from typing import Any

from ..hparams import ActionFinetuningArguments
from ..hparams.finetuning_args import ACTION_DECODER_TYPES
from ..model.loss import ACTION_LOSSES
from ..model.multi_label import PROBLEM_TYPES


@dataclass(frozen=True)
class ActionOption:
    r"""An ``ActionFinetuningArguments`` field and how the Train tab edits it (kind: int, float, text or choice)."""

    name: str
    kind: str
    choices: tuple[str, ...] = ()


# Adding an option to LLaMA Board is one row here (+ its strings in locales.py).
ACTION_OPTIONS = (
    ActionOption("num_action_classes", "int"),
    ActionOption("action_decoder_type", "choice", ACTION_DECODER_TYPES),
    ActionOption("action_decoder_hidden_size", "int"),
    ActionOption("action_decoder_path", "text"),
    ActionOption("action_token_lr_scale", "float"),
    ActionOption("action_label_names", "text"),
    ActionOption("action_problem_type", "choice", PROBLEM_TYPES),
    ActionOption("action_threshold", "float"),
    ActionOption("action_class_weights", "text"),
    ActionOption("action_loss", "choice", ACTION_LOSSES),
    ActionOption("action_focal_gamma", "float"),
    ActionOption("action_decoder_dropout", "float"),
    ActionOption("action_hidden_layer", "int"),
)


def option_default(name: str) -> Any:
    r"""The parser's default of a field, so that the UI starts where a YAML without the key would."""
    for field in fields(ActionFinetuningArguments):
        if field.name == name:
            return None if field.default is MISSING else field.default

    raise KeyError(f"{name} is not a field of ActionFinetuningArguments: fix ivcp.webui.options.ACTION_OPTIONS.")


def create_option_widget(option: ActionOption):
    r"""The Gradio component of one option, holding the parser's default."""
    import gradio as gr

    default = option_default(option.name)
    if option.kind == "choice":
        return gr.Dropdown(choices=list(option.choices), value=default)

    if option.kind in ("int", "float") and default is not None:  # an optional number is a textbox: empty = None
        return gr.Number(value=default, precision=0 if option.kind == "int" else None)

    return gr.Textbox(value=default or "")


def option_arguments(values: dict[str, Any]) -> dict[str, Any]:
    r"""Widget values -> training arguments; an empty widget leaves the option at its default (absent)."""
    args = {}
    for option in ACTION_OPTIONS:
        value = values[option.name]
        if value is None or (isinstance(value, str) and not value.strip()):
            continue

        if option.kind == "int":
            value = int(value)
        elif option.kind == "float":
            value = float(value)
        elif option.kind == "text":
            value = value.strip()

        args[option.name] = value

    return args
