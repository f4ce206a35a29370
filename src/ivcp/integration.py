"""Every patch IVCP applies to LLaMA-Factory, in one place.

Each patch is a thin wrapper that hands everything except ``stage: action_cls`` to the original untouched, so
the other stages behave exactly as upstream. ``register()`` is idempotent and checks first that the pinned
LLaMA-Factory names still exist, failing loudly (not half-patched) when they do not.
"""

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
    "llamafactory.data.parser": ["DatasetAttr"],
    "llamafactory.data.collator": ["MultiModalDataCollatorForSeq2Seq"],
    "llamafactory.data.mm_plugin": ["MMPluginMixin", "Qwen2VLPlugin"],  # subclassed by data/video_plugin.py
    "llamafactory.data.template": ["TEMPLATES"],
    "llamafactory.data.processor.processor_utils": ["DatasetProcessor"],
    "llamafactory.model.model_utils.embedding": ["resize_embedding_layer"],
    "llamafactory.train.callbacks": ["LogCallback", "ReporterCallback", "SaveProcessorCallback"],
    "llamafactory.train.trainer_utils": ["create_custom_optimizer", "create_custom_scheduler"],
}

_registered = False


def self_check() -> None:
    r"""Fail with a clear message if the LLaMA-Factory names IVCP hooks into are gone."""
    import llamafactory

    missing = []
    for module_name, names in REQUIRED_NAMES.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            missing.append(f"{module_name} ({err})")
            continue

        missing += [f"{module_name}.{name}" for name in names if not hasattr(module, name)]

    for owner, method in (
        ("llamafactory.data.parser.DatasetAttr", "join"),
        ("llamafactory.data.mm_plugin.MMPluginMixin", "_regularize_videos"),
        ("llamafactory.data.mm_plugin.Qwen2VLPlugin", "_get_qwen_video_stream_metadata"),
    ):
        module_name, class_name = owner.rsplit(".", 1)
        if not hasattr(getattr(sys.modules.get(module_name), class_name, None), method):
            missing.append(f"{owner}.{method}")

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
        )

    return _get_dataset_processor


def _dataset_attr_join_wrapper(original: Callable) -> Callable:
    r"""Also read ``columns: {action_label: ...}`` (default ``action_label``) and ``label_names`` of dataset_info.json."""

    def join(self, attr: dict[str, Any]) -> None:
        original(self, attr)
        self.action_label = attr.get("columns", {}).get("action_label", "action_label")
        self.action_label_names = attr.get("label_names")

    return join


def _install_aliases() -> None:
    for alias, target in MODULE_ALIASES.items():
        sys.modules.setdefault(alias, importlib.import_module(target))


def register() -> None:
    r"""Hook ``stage: action_cls`` into LLaMA-Factory. Safe to call any number of times."""
    global _registered
    if _registered:
        return

    self_check()
    from llamafactory.data import loader
    from llamafactory.data.parser import DatasetAttr
    from llamafactory.hparams import parser
    from llamafactory.train import tuner

    _swap_finetuning_arguments()
    _patch(parser, "read_args", _read_args_wrapper)
    _patch(tuner, "read_args", _read_args_wrapper)
    _patch(tuner, "_training_function", _training_function_wrapper)
    _patch(tuner, "export_model", _export_model_wrapper)
    _patch(loader, "align_dataset", _align_dataset_wrapper)
    _patch(loader, "_get_dataset_processor", _get_dataset_processor_wrapper)
    _patch(DatasetAttr, "join", _dataset_attr_join_wrapper)
    _install_aliases()
    _registered = True
