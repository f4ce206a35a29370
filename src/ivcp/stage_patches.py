"""The patches the ``action_cls`` stage needs wherever it runs: its arguments, its data and its model loading.

``ivcp.integration`` lists this module and registers it with the command hooks (train, export, api, webui); the
in-process entry points (``ActionClassifier``, ``ivcp check-data``) call :func:`register_stage` alone, so they never
import the commands they are used by. Each patch is a thin wrapper that hands everything except ``stage: action_cls``
to the original untouched. :func:`register_stage` is idempotent and checks first that the pinned LLaMA-Factory names
still exist, failing loudly (not half-patched) when they do not.
"""

import importlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any

from omegaconf import OmegaConf

from .constants import ACTION_STAGE, MODULE_ALIASES
from .hparams.flags import flags_to_dotlist


PINNED_VERSION = "0.9.5"
PATCHED_MARK = "__ivcp_original__"
REQUIRED_NAMES = {
    "llamafactory.train.tuner": [
        "_training_function",
        "read_args",
        "get_train_args",
        "run_rm",
        "run_exp",
        "export_model",
        "load_model",
        "load_tokenizer",
    ],
    "llamafactory.hparams.parser": ["_TRAIN_ARGS", "_INFER_ARGS", "_EVAL_ARGS", "read_args", "FinetuningArguments"],
    "llamafactory.data.loader": [
        "align_dataset",
        "_get_dataset_processor",
        "_get_preprocessed_dataset",
        "_get_merged_dataset",
        "get_dataset",
    ],
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
    "llamafactory.model.loader": ["init_adapter", "patch_config"],
    "llamafactory.train.callbacks": ["LogCallback", "ReporterCallback", "SaveProcessorCallback"],
    "llamafactory.train.trainer_utils": ["create_custom_optimizer", "create_custom_scheduler"],
    "llamafactory.api.app": ["run_api"],
    # HF Trainer's private hook ActionClsTrainer overrides (action_token_own_clip): gone, it would silently not run
    "transformers.trainer": ["Trainer._clip_grad_norm"],
}

_registered = False
_registering = False  # registering imports trigger modules, whose import registers again


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


def patch(owner: Any, name: str, make_wrapper: Callable[[Callable], Callable]) -> None:
    r"""Replace ``owner.name`` by ``make_wrapper(original)``, once."""
    original = getattr(owner, name)
    if hasattr(original, PATCHED_MARK):
        return

    wrapper = wraps(original)(make_wrapper(original))
    setattr(wrapper, PATCHED_MARK, original)
    setattr(owner, name, wrapper)


@contextmanager
def swapped(owner: Any, **replacements: Callable) -> Iterator[None]:
    r"""Replace attributes of ``owner`` for the duration of one call, then put the originals back."""
    originals = {name: getattr(owner, name) for name in replacements}
    for name, replacement in replacements.items():
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(owner, name, original)


@contextmanager
def model_loading_options(max_memory: dict[Any, Any] | None = None, dtype: Any = None) -> Iterator[None]:
    r"""Hand LLaMA-Factory's ``load_model`` what it does not pass to ``from_pretrained``, for the loads within.

    It passes no ``max_memory``, an offload folder only for ``device_map: auto`` (a map with ``disk`` entries needs
    one too) and always ``torch_dtype="auto"``, which reads ``config.dtype``: so the dtype is set there.
    """
    from llamafactory.model import loader as model_loader

    original = model_loader.patch_config

    def patch_config(config, tokenizer, model_args, init_kwargs, is_trainable) -> None:
        original(config, tokenizer, model_args, init_kwargs, is_trainable)
        if "device_map" in init_kwargs:
            init_kwargs.setdefault("offload_folder", model_args.offload_folder)
            if max_memory is not None:
                init_kwargs["max_memory"] = max_memory
        if dtype is not None:
            config.dtype = dtype

    with swapped(model_loader, patch_config=patch_config):
        yield


def _swap_finetuning_arguments() -> None:
    from llamafactory.hparams import parser

    from .hparams import ActionFinetuningArguments

    for arg_list in (parser._TRAIN_ARGS, parser._INFER_ARGS, parser._EVAL_ARGS):
        for i, cls in enumerate(arg_list):
            if cls is parser.FinetuningArguments:
                arg_list[i] = ActionFinetuningArguments


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

        from .data.context import active_action_data, preprocessing_evaluation_data
        from .data.processor import ActionDatasetProcessor

        config = active_action_data()
        return ActionDatasetProcessor(
            test_clips=config.test_clips if preprocessing_evaluation_data() else 1,
            template=template,
            tokenizer=tokenizer,
            processor=processor,
            data_args=data_args,
            num_classes=config.num_classes,
            label_names=config.label_names,
            multi_label=config.multi_label,
        )

    return _get_dataset_processor


def _get_preprocessed_dataset_wrapper(original: Callable) -> Callable:
    r"""Tell the action processor which dataset it preprocesses: evaluation videos may become clips."""

    def _get_preprocessed_dataset(
        dataset, data_args, training_args, stage, template, tokenizer, processor=None, is_eval=False
    ):
        if stage != ACTION_STAGE or not is_eval:
            return original(dataset, data_args, training_args, stage, template, tokenizer, processor, is_eval)

        from .data.context import evaluation_data

        with evaluation_data():
            return original(dataset, data_args, training_args, stage, template, tokenizer, processor, is_eval)

    return _get_preprocessed_dataset


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


def register_stage(force: bool = False) -> None:
    r"""Apply the stage's patches (arguments, data, model loading). Idempotent; ``force`` runs it again (tests)."""
    global _registered, _registering
    if (_registered and not force) or _registering:
        return

    _registering = True
    try:
        self_check()
        from llamafactory.data import loader
        from llamafactory.data.parser import DatasetAttr
        from llamafactory.hparams import parser
        from llamafactory.model import loader as model_loader
        from llamafactory.train import tuner

        _swap_finetuning_arguments()
        patch(parser, "read_args", _read_args_wrapper)
        patch(tuner, "read_args", _read_args_wrapper)
        patch(model_loader, "init_adapter", _init_adapter_wrapper)
        patch(loader, "align_dataset", _align_dataset_wrapper)
        patch(loader, "_get_dataset_processor", _get_dataset_processor_wrapper)
        patch(loader, "_get_preprocessed_dataset", _get_preprocessed_dataset_wrapper)
        patch(DatasetAttr, "join", _dataset_attr_join_wrapper)
        _install_aliases()
        _registered = True
    finally:
        _registering = False
