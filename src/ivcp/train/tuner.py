"""The ``action_cls`` branch of LLaMA-Factory's ``tuner._training_function``.

Upstream dispatches on a closed if/elif chain, so the stage gets its own entry: it sets up the same callbacks with
LLaMA-Factory's own classes, runs the workflow and tears the process group down like upstream.
"""

from typing import Any

import torch.distributed as dist
from llamafactory.extras import logging
from llamafactory.hparams import get_train_args
from llamafactory.train.callbacks import (
    LogCallback,
    ModuleProfilerCallback,
    PissaConvertCallback,
    ReporterCallback,
    TorchProfilerCallback,
)
from llamafactory.train.trainer_utils import get_swanlab_callback
from transformers import EarlyStoppingCallback

from ..constants import ACTION_STAGE
from .action_cls import run_action_cls


logger = logging.get_logger(__name__)


def requests_action_stage(args: dict[str, Any] | list[str] | None) -> bool:
    r"""Whether parsed ``args`` (a YAML dict or a command line) ask for ``stage: action_cls``."""
    if isinstance(args, dict):
        return args.get("stage") == ACTION_STAGE

    args = list(args or [])
    for i, arg in enumerate(args):
        if arg == "--stage" and i + 1 < len(args):
            return args[i + 1] == ACTION_STAGE
        if arg.startswith("--stage="):
            return arg.split("=", 1)[1] == ACTION_STAGE

    return False


def run_action_training(config: dict[str, Any]) -> None:
    callbacks: list[Any] = config.get("callbacks")
    model_args, data_args, training_args, finetuning_args, generating_args = get_train_args(config.get("args"))
    callbacks.append(LogCallback())
    if finetuning_args.pissa_convert:
        callbacks.append(PissaConvertCallback())

    if finetuning_args.use_swanlab:
        callbacks.append(get_swanlab_callback(finetuning_args))

    if finetuning_args.early_stopping_steps is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=finetuning_args.early_stopping_steps))

    if getattr(training_args, "enable_torch_profiler", False):
        callbacks.append(TorchProfilerCallback(training_args))

    if getattr(training_args, "profile_modules", None):
        callbacks.append(ModuleProfilerCallback(training_args.profile_modules))

    callbacks.append(ReporterCallback(model_args, data_args, finetuning_args, generating_args))  # add to last
    run_action_cls(model_args, data_args, training_args, finetuning_args, callbacks)
    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception as err:  # noqa: BLE001
        logger.warning(f"Failed to destroy process group: {err}.")
