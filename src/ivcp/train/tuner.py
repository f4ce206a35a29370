"""The ``action_cls`` branch of LLaMA-Factory's ``tuner._training_function``, without re-typing any of it.

Upstream's function parses the arguments, builds the callbacks, dispatches on ``finetuning_args.stage`` through a
closed if/elif chain, and then returns early under Ray or tears the process group down. ``ivcp.integration`` runs
that very function for an action_cls run with two names of ``llamafactory.train.tuner`` swapped for the call:
``get_train_args`` (:meth:`ActionDispatch.get_train_args`: the stage reads ``rm`` while upstream dispatches) and
``run_rm`` (:meth:`ActionDispatch.run_rm`: the action_cls workflow, which takes the rm workflow's arguments). So the
callbacks, the Ray return and the teardown are upstream's own.
"""

from collections.abc import Callable
from typing import Any

from ..constants import ACTION_STAGE
from .action_cls import run_action_cls


DISPATCH_STAGE = "rm"  # the upstream branch whose workflow has run_action_cls's signature


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


class ActionDispatch:
    r"""The two stand-ins upstream's ``_training_function`` calls for one action_cls run."""

    def __init__(self, get_train_args: Callable) -> None:
        self._get_train_args = get_train_args

    def get_train_args(self, args: Any) -> tuple:
        model_args, data_args, training_args, finetuning_args, generating_args = self._get_train_args(args)
        finetuning_args.stage = DISPATCH_STAGE  # back to action_cls before anything else reads it (run_rm)
        return model_args, data_args, training_args, finetuning_args, generating_args

    def run_rm(self, model_args, data_args, training_args, finetuning_args, callbacks) -> None:
        finetuning_args.stage = ACTION_STAGE
        run_action_cls(model_args, data_args, training_args, finetuning_args, callbacks)
