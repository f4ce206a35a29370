"""Every patch IVCP applies to LLaMA-Factory: the stage's own (``ivcp.stage_patches``) and the command hooks here.

The hooks route ``llamafactory-cli train`` / ``export`` / ``api`` / ``webui`` to the ``action_cls`` code when the
run asks for it, and hand everything else to the original untouched, so the other stages behave exactly as upstream.
Patch modules: ``ivcp.stage_patches`` (arguments, data, model loading) and this one. Nothing in IVCP imports this
module except the package's ``register`` / ``register_webui``; ``register()`` is idempotent and checks first that
the pinned LLaMA-Factory names still exist, failing loudly (not half-patched) when they do not.
"""

from collections.abc import Callable
from typing import Any

from .constants import ACTION_STAGE
from .stage_patches import patch, register_stage, self_check, swapped


# LLaMA Board's names: checked when the web UI is loaded (importing them means importing Gradio).
WEBUI_REQUIRED_NAMES = {
    "llamafactory.extras.constants": ["TRAINING_STAGES", "PEFT_METHODS"],
    "llamafactory.webui.interface": ["create_train_tab", "create_eval_tab"],
    "llamafactory.webui.components.train": ["list_datasets"],
    "llamafactory.webui.runner": ["Runner._parse_train_args", "Runner._parse_eval_args"],
    "llamafactory.webui.locales": ["LOCALES", "ALERTS"],
    "llamafactory.webui.common": ["get_save_dir", "load_dataset_info"],
}
ACTION_STAGE_TITLE = "Action Classification"  # the stage's name in LLaMA Board's stage list

_registered = False
_webui_registered = False


def _training_function_wrapper(original: Callable) -> Callable:
    r"""An action_cls run goes through upstream's own function (callbacks, Ray return, teardown) with its dispatch.

    ``get_train_args`` and ``run_rm`` of the tuner module are swapped for the call (see ``ivcp.train.tuner``).
    """

    def _training_function(config: dict[str, Any]) -> None:
        from llamafactory.train import tuner

        from .train.tuner import ActionDispatch, requests_action_stage

        if not requests_action_stage(config.get("args")):
            return original(config)

        dispatch = ActionDispatch(tuner.get_train_args)
        with swapped(tuner, get_train_args=dispatch.get_train_args, run_rm=dispatch.run_rm):
            return original(config)

    return _training_function


def _export_model_wrapper(original: Callable) -> Callable:
    r"""``llamafactory-cli export`` of an action classifier also merges and carries the head and ``<ACTION>``."""

    def export_model(args=None):
        from llamafactory.train import tuner

        from .train.export import ActionExport, action_export_args

        action_args = action_export_args(args)
        if action_args is None:
            return original(args)

        exporter = ActionExport(tuner.load_tokenizer)
        with swapped(tuner, load_tokenizer=exporter.load_tokenizer, load_model=exporter.load_model):
            original(action_args)

        exporter.save_head(action_args["export_dir"])

    return export_model


def _run_api_wrapper(original: Callable) -> Callable:
    r"""``llamafactory-cli api`` serves an action classifier with IVCP's app; ChatModel cannot load one."""

    def run_api() -> None:
        from llamafactory.hparams import parser

        from .train.export import action_export_args

        action_args = action_export_args(parser.read_args())
        if action_args is None:
            return original()

        from .api.app import run_action_api

        run_action_api(action_args)

    return run_api


def register(force: bool = False) -> None:
    r"""Hook ``stage: action_cls`` into LLaMA-Factory. Idempotent; ``force`` patches again (what tests use)."""
    global _registered
    if _registered and not force:
        return

    register_stage(force)
    from llamafactory.api import app as api_app
    from llamafactory.train import tuner

    patch(tuner, "_training_function", _training_function_wrapper)
    patch(tuner, "export_model", _export_model_wrapper)
    patch(api_app, "run_api", _run_api_wrapper)
    _registered = True


def _create_train_tab_wrapper(original: Callable) -> Callable:
    r"""The Train tab with the action_cls options; they join the tab's inputs before its buttons are bound."""

    def create_train_tab(engine):
        from .webui.components import ActionTrainBox

        box = ActionTrainBox()
        base_elems = engine.manager.get_base_elems
        with swapped(engine.manager, get_base_elems=lambda: base_elems() | box.inputs):
            elem_dict = original(engine)

        return box.attach(elem_dict)

    return create_train_tab


def _create_eval_tab_wrapper(original: Callable) -> Callable:
    r"""The Evaluate & Predict tab, then the action_cls results and the try-it panel."""

    def create_eval_tab(engine):
        from .webui.components import create_action_eval_box

        elem_dict = original(engine)
        return {**elem_dict, **create_action_eval_box(engine, elem_dict)}

    return create_eval_tab


def _parse_train_args_wrapper(original: Callable) -> Callable:
    def _parse_train_args(self, data):
        from .webui.control import action_train_args

        args = original(self, data)
        if args["stage"] == ACTION_STAGE:
            args.update(action_train_args(lambda elem_id: data[self.manager.get_elem_by_id(elem_id)]))

        return args

    return _parse_train_args


def _parse_eval_args_wrapper(original: Callable) -> Callable:
    r"""Upstream hard-codes ``stage: sft``; a checkpoint holding an action head is evaluated as action_cls."""

    def _parse_eval_args(self, data):
        from .webui.control import action_eval_args

        args = original(self, data)
        return action_eval_args(args) or args

    return _parse_eval_args


def _list_datasets_wrapper(original: Callable) -> Callable:
    r"""For the action_cls stage, the Train tab lists the datasets whose examples carry action labels."""

    def list_datasets(dataset_dir=None, training_stage=None):
        import gradio as gr
        from llamafactory.extras.constants import TRAINING_STAGES
        from llamafactory.webui.common import DEFAULT_DATA_DIR

        from .webui.control import list_action_datasets

        if training_stage is None or TRAINING_STAGES.get(training_stage) != ACTION_STAGE:
            return original(dataset_dir) if training_stage is None else original(dataset_dir, training_stage)

        return gr.Dropdown(choices=list_action_datasets(dataset_dir if dataset_dir is not None else DEFAULT_DATA_DIR))

    return list_datasets


def register_webui() -> None:
    r"""Offer ``action_cls`` in LLaMA Board (``llamafactory-cli webui``). Safe to call any number of times."""
    global _webui_registered
    if _webui_registered:
        return

    register()
    self_check(WEBUI_REQUIRED_NAMES)
    from llamafactory.extras.constants import TRAINING_STAGES
    from llamafactory.webui import interface, locales, runner
    from llamafactory.webui.components import train

    from .webui.components import check_layout_api
    from .webui.locales import install_locales

    check_layout_api()
    TRAINING_STAGES.setdefault(ACTION_STAGE_TITLE, ACTION_STAGE)  # in place: the web UI imported it by name
    install_locales(locales.LOCALES, locales.ALERTS)
    patch(interface, "create_train_tab", _create_train_tab_wrapper)
    patch(interface, "create_eval_tab", _create_eval_tab_wrapper)
    patch(runner.Runner, "_parse_train_args", _parse_train_args_wrapper)
    patch(runner.Runner, "_parse_eval_args", _parse_eval_args_wrapper)
    patch(train, "list_datasets", _list_datasets_wrapper)
    _webui_registered = True
