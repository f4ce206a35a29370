"""Every patch IVCP applies to LLaMA-Factory, in one place.

Each patch is a thin wrapper that hands everything except ``stage: action_cls`` to the original untouched, so
the other stages behave exactly as upstream. ``register()`` is idempotent and checks first that the pinned
LLaMA-Factory names still exist, failing loudly (not half-patched) when they do not.
"""

import copy
import importlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any

from omegaconf import OmegaConf

from . import ACTION_STAGE
from ._autoload import MODULE_ALIASES


PINNED_VERSION = "0.9.5"
PATCHED_MARK = "__ivcp_original__"
REQUIRED_NAMES = {
    "llamafactory.train.tuner": [
        "_training_function",
        "read_args",
        "run_exp",
        "export_model",
        "load_model",
        "load_tokenizer",
    ],
    "llamafactory.hparams.parser": ["_TRAIN_ARGS", "_INFER_ARGS", "_EVAL_ARGS", "read_args", "FinetuningArguments"],
    "llamafactory.data.loader": ["align_dataset", "_get_dataset_processor", "_get_merged_dataset", "get_dataset"],
    "llamafactory.data.converter": ["get_dataset_converter", "DatasetConverter"],
    "llamafactory.data.parser": ["DatasetAttr", "DatasetAttr.join"],
    "llamafactory.data.collator": ["MultiModalDataCollatorForSeq2Seq"],
    "llamafactory.data.mm_plugin": [  # the reader subclasses the plugins (data/video_plugin.py); processor fix
        "MMPluginMixin._regularize_videos",
        "Qwen2VLPlugin._get_qwen_video_stream_metadata",
        "LlavaNextVideoPlugin",
        "VideoLlavaPlugin",
    ],
    "llamafactory.data.template": ["TEMPLATES"],
    "llamafactory.data.processor.processor_utils": ["DatasetProcessor"],
    "llamafactory.model.model_utils.embedding": ["resize_embedding_layer"],
    "llamafactory.model.loader": ["init_adapter"],
    "llamafactory.train.callbacks": ["LogCallback", "ReporterCallback", "SaveProcessorCallback"],
    "llamafactory.train.trainer_utils": ["create_custom_optimizer", "create_custom_scheduler"],
    "llamafactory.api.app": ["run_api"],
}

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
_registering = False  # register() imports trigger modules, whose import calls register() again
_webui_registered = False


def _has_attribute(owner: Any, dotted_name: str) -> bool:
    for name in dotted_name.split("."):  # "Class.method" names a method
        if not hasattr(owner, name):
            return False

        owner = getattr(owner, name)

    return True


def self_check(required_names: dict[str, list[str]] | None = None) -> None:
    r"""Fail with a clear message if the LLaMA-Factory names IVCP hooks into are gone."""
    import llamafactory

    missing = []
    for module_name, names in (REQUIRED_NAMES if required_names is None else required_names).items():
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            missing.append(f"{module_name} ({err})")
            continue

        missing += [f"{module_name}.{name}" for name in names if not _has_attribute(module, name)]

    if missing:
        raise RuntimeError(
            f"IVCP is built for llamafactory=={PINNED_VERSION}, but the installed llamafactory "
            f"{getattr(llamafactory, '__version__', '?')} lacks: {', '.join(missing)}. "
            f"Install llamafactory=={PINNED_VERSION} or set IVCP_DISABLE=1."
        )


def _patch(owner: Any, name: str, make_wrapper: Callable[[Callable], Callable]) -> None:
    r"""Replace ``owner.name`` by ``make_wrapper(original)``, once."""
    original = getattr(owner, name)
    if hasattr(original, PATCHED_MARK):
        return

    wrapper = wraps(original)(make_wrapper(original))
    setattr(wrapper, PATCHED_MARK, original)
    setattr(owner, name, wrapper)


@contextmanager
def _swapped(owner: Any, **replacements: Callable) -> Iterator[None]:
    r"""Replace attributes of ``owner`` for the duration of one call, then put the originals back."""
    originals = {name: getattr(owner, name) for name in replacements}
    for name, replacement in replacements.items():
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(owner, name, original)


def _swap_finetuning_arguments() -> None:
    from llamafactory.hparams import parser

    from .hparams import ActionFinetuningArguments

    for arg_list in (parser._TRAIN_ARGS, parser._INFER_ARGS, parser._EVAL_ARGS):
        for i, cls in enumerate(arg_list):
            if cls is parser.FinetuningArguments:
                arg_list[i] = ActionFinetuningArguments


def flags_to_dotlist(flags: list[str]) -> list[str]:
    r"""``--key value`` / ``--key=value`` / ``--flag`` after a YAML path -> OmegaConf's ``key=value``."""
    dotlist, i = [], 0
    while i < len(flags):
        flag = flags[i]
        if not flag.startswith("--"):
            dotlist.append(flag)
            i += 1
        elif "=" in flag:
            dotlist.append(flag[2:])
            i += 1
        elif i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            dotlist.append(f"{flag[2:]}={flags[i + 1]}")
            i += 2
        else:
            dotlist.append(f"{flag[2:]}=true")
            i += 1

    return dotlist


def _config_file_stage(argv: list[str]) -> str | None:
    config = OmegaConf.merge(OmegaConf.load(argv[1]), OmegaConf.from_dotlist(flags_to_dotlist(argv[2:])))
    return config.get("stage")


def _read_args_wrapper(original: Callable) -> Callable:
    r"""Accept ``llamafactory-cli train it.yaml --do_train false`` for action_cls (upstream takes key=value)."""

    def read_args(args=None):
        argv = sys.argv
        if (
            args is None
            and len(argv) > 2
            and argv[1].endswith((".yaml", ".yml"))
            and any(arg.startswith("--") for arg in argv[2:])
            and _config_file_stage(argv) == ACTION_STAGE
        ):
            argv[2:] = flags_to_dotlist(argv[2:])

        return original(args)

    return read_args


def _training_function_wrapper(original: Callable) -> Callable:
    def _training_function(config: dict[str, Any]) -> None:
        from .train.tuner import requests_action_stage, run_action_training

        if requests_action_stage(config.get("args")):
            return run_action_training(config)

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
        with _swapped(tuner, load_tokenizer=exporter.load_tokenizer, load_model=exporter.load_model):
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


def _init_adapter_wrapper(original: Callable) -> Callable:
    r"""``action_hidden_layer``: drop the LLM layers above the chosen one before LoRA / freeze tuning see the model."""

    def init_adapter(config, model, model_args, finetuning_args, is_trainable):
        if getattr(finetuning_args, "stage", None) == ACTION_STAGE and finetuning_args.action_hidden_layer != -1:
            from .model.layers import keep_layers_up_to

            keep_layers_up_to(model, finetuning_args.action_hidden_layer)

        return original(config, model, model_args, finetuning_args, is_trainable)

    return init_adapter


def _align_dataset_wrapper(original: Callable) -> Callable:
    def align_dataset(dataset, dataset_attr, data_args, training_args):
        from .data.context import active_action_data
        from .data.converter import align_action_dataset

        config = active_action_data()
        if config is None:
            return original(dataset, dataset_attr, data_args, training_args)

        return align_action_dataset(dataset, dataset_attr, data_args, training_args, config)

    return align_dataset


def _get_dataset_processor_wrapper(original: Callable) -> Callable:
    def _get_dataset_processor(data_args, stage, template, tokenizer, processor, do_generate=False):
        if stage != ACTION_STAGE:
            return original(data_args, stage, template, tokenizer, processor, do_generate)

        from .data.context import active_action_data
        from .data.processor import ActionDatasetProcessor

        config = active_action_data()
        return ActionDatasetProcessor(
            template=template,
            tokenizer=tokenizer,
            processor=processor,
            data_args=data_args,
            num_classes=config.num_classes,
            label_names=config.label_names,
            multi_label=config.multi_label,
        )

    return _get_dataset_processor


def _dataset_attr_join_wrapper(original: Callable) -> Callable:
    r"""Also read ``columns: {action_label: ...}`` (default ``action_label``) and ``label_names`` of dataset_info.json."""

    def join(self, attr: dict[str, Any]) -> None:
        original(self, attr)
        self.action_label = attr.get("columns", {}).get("action_label", "action_label")
        self.action_label_names = attr.get("label_names")

    return join


class _VideosOnlyProcessor:
    r"""A transformers video processor that drops the ``images=None`` LLaMA-Factory 0.9.5 passes it.

    ``MMPluginMixin._get_mm_inputs`` calls ``video_processor(images=None, videos=...)`` whenever the processor's
    ``preprocess`` takes ``videos``; transformers 5.6's dedicated video processors (LLaVA-NeXT-Video, Video-LLaVA)
    reject the keyword (``VideosKwargs.__init__() got an unexpected keyword argument 'images'``).
    """

    def __init__(self, video_processor: Any) -> None:
        self._video_processor = video_processor

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_video_processor":  # pickling looks these up before __dict__ is set
            raise AttributeError(name)

        return getattr(self._video_processor, name)

    def __call__(self, *args: Any, images: Any = None, **kwargs: Any) -> Any:
        if images is not None:
            raise ValueError("A transformers video processor takes videos only.")

        return self._video_processor(*args, **kwargs)


class _ActionProcessor:
    r"""The multimodal processor the action_cls stage hands LLaMA-Factory: the same, its video processor wrapped."""

    def __init__(self, processor: Any) -> None:
        self._processor = processor
        self.video_processor = _VideosOnlyProcessor(processor.video_processor)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_processor":
            raise AttributeError(name)

        return getattr(self._processor, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("_processor", "video_processor"):
            object.__setattr__(self, name, value)
        else:  # LLaMA-Factory sets preprocessing settings (video_fps, ...) on the processor
            setattr(self._processor, name, value)

    def __copy__(self) -> "_ActionProcessor":
        r"""A copy with its own settings (``ActionClassifier.with_video_settings`` copies, then sets ``video_fps``)."""
        return _ActionProcessor(copy.copy(self._processor))


def action_processor(processor: Any) -> Any:
    r"""``processor``, with its video processor made callable the way LLaMA-Factory 0.9.5 calls it (action_cls only).

    Only transformers' dedicated video processors (``BaseVideoProcessor``) are wrapped, and the wrapper only drops
    ``images=None``; every other processor is returned as is. sft keeps upstream's behaviour.
    """
    from transformers.video_processing_utils import BaseVideoProcessor

    video_processor = getattr(processor, "video_processor", None)
    if isinstance(processor, _ActionProcessor) or not isinstance(video_processor, BaseVideoProcessor):
        return processor

    return _ActionProcessor(processor)


def _install_aliases() -> None:
    for alias, target in MODULE_ALIASES.items():
        sys.modules.setdefault(alias, importlib.import_module(target))


def register() -> None:
    r"""Hook ``stage: action_cls`` into LLaMA-Factory. Safe to call any number of times."""
    global _registering
    if _registered or _registering:
        return

    _registering = True
    try:
        _register()
    finally:
        _registering = False


def _register() -> None:
    global _registered

    self_check()
    from llamafactory.api import app as api_app
    from llamafactory.data import loader
    from llamafactory.data.parser import DatasetAttr
    from llamafactory.hparams import parser
    from llamafactory.model import loader as model_loader
    from llamafactory.train import tuner

    _swap_finetuning_arguments()
    _patch(parser, "read_args", _read_args_wrapper)
    _patch(tuner, "read_args", _read_args_wrapper)
    _patch(tuner, "_training_function", _training_function_wrapper)
    _patch(tuner, "export_model", _export_model_wrapper)
    _patch(api_app, "run_api", _run_api_wrapper)
    _patch(model_loader, "init_adapter", _init_adapter_wrapper)
    _patch(loader, "align_dataset", _align_dataset_wrapper)
    _patch(loader, "_get_dataset_processor", _get_dataset_processor_wrapper)
    _patch(DatasetAttr, "join", _dataset_attr_join_wrapper)
    _install_aliases()
    _registered = True


def _create_train_tab_wrapper(original: Callable) -> Callable:
    r"""The Train tab with the action_cls options; they join the tab's inputs before its buttons are bound."""

    def create_train_tab(engine):
        from .webui.components import ActionTrainBox

        box = ActionTrainBox()
        base_elems = engine.manager.get_base_elems
        with _swapped(engine.manager, get_base_elems=lambda: base_elems() | box.inputs):
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

    from .webui.locales import install_locales

    TRAINING_STAGES.setdefault(ACTION_STAGE_TITLE, ACTION_STAGE)  # in place: the web UI imported it by name
    install_locales(locales.LOCALES, locales.ALERTS)
    _patch(interface, "create_train_tab", _create_train_tab_wrapper)
    _patch(interface, "create_eval_tab", _create_eval_tab_wrapper)
    _patch(runner.Runner, "_parse_train_args", _parse_train_args_wrapper)
    _patch(runner.Runner, "_parse_eval_args", _parse_eval_args_wrapper)
    _patch(train, "list_datasets", _list_datasets_wrapper)
    _webui_registered = True
