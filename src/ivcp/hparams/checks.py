"""Cross-checks of the ``action_cls`` arguments that span LLaMA-Factory's argument groups.

A field alone is checked in ``ActionFinetuningArguments.__post_init__``; the training workflow and ``ivcp check-data``
call :func:`check_action_cls_args` before loading anything.
"""

from typing import TYPE_CHECKING

from accelerate.utils import parse_flag_from_env

from ..data.clips import RANDOM_SEGMENT
from ..model.loss import BALANCED
from ..model.multi_label import MULTI_LABEL


if TYPE_CHECKING:
    from llamafactory.hparams import DataArguments, ModelArguments
    from transformers import Seq2SeqTrainingArguments

    from .finetuning_args import ActionFinetuningArguments


def check_action_cls_args(
    model_args: "ModelArguments",
    data_args: "DataArguments",
    finetuning_args: "ActionFinetuningArguments",
    training_args: "Seq2SeqTrainingArguments | None" = None,
) -> None:
    r"""Reject settings that would silently break the stage."""
    if model_args.split_special_tokens:
        raise ValueError("`split_special_tokens: true` would split the <ACTION> token: remove it for action_cls.")

    if data_args.packing or data_args.neat_packing:
        raise ValueError("`packing` mixes examples in one sequence, action_cls needs one per sequence: remove it.")

    if finetuning_args.finetuning_type not in ("lora", "full", "freeze"):
        raise ValueError(
            f"action_cls supports finetuning_type lora, full and freeze, not {finetuning_args.finetuning_type}."
        )

    if data_args.streaming and finetuning_args.action_class_weights == BALANCED:
        raise ValueError(
            "`action_class_weights: balanced` counts the classes over the whole training set, which `streaming: true` "
            "cannot do: give the weights as a list."
        )

    if training_args is not None:
        check_fsdp_device(training_args)

    smoothing = training_args.label_smoothing_factor if training_args is not None else 0.0
    if finetuning_args.action_problem_type == MULTI_LABEL and (
        finetuning_args.action_loss != "cross_entropy" or smoothing
    ):
        raise ValueError(
            "`action_problem_type: multi_label` trains with binary cross-entropy: `action_loss: focal` and "
            "`label_smoothing_factor` apply to single-label runs only; remove them."
        )

    _check_sampling_args(data_args, finetuning_args, training_args)


def _check_sampling_args(
    data_args: "DataArguments",
    finetuning_args: "ActionFinetuningArguments",
    training_args: "Seq2SeqTrainingArguments | None",
) -> None:
    r"""Multi-clip evaluation needs a separate, indexable evaluation set; training draws need fresh workers."""
    if finetuning_args.action_test_clips > 1:
        if data_args.val_size:
            raise ValueError(
                "`action_test_clips` cuts the videos of `eval_dataset` into clips, but `val_size` splits the "
                "already-preprocessed training rows: give the evaluation videos as `eval_dataset` instead."
            )
        if data_args.streaming:
            raise ValueError("`action_test_clips` > 1 needs the evaluation set in memory: remove `streaming: true`.")
        if training_args is not None and training_args.batch_eval_metrics:
            raise ValueError(
                "`action_test_clips` > 1 combines a video's clips over the whole evaluation: remove "
                "`batch_eval_metrics`."
            )

    if (
        finetuning_args.action_train_sampling == RANDOM_SEGMENT
        and training_args is not None
        and training_args.dataloader_persistent_workers
        and training_args.dataloader_num_workers > 0
    ):
        raise ValueError(
            "`action_train_sampling: random_segment` draws new frames each epoch in the collator, which persistent "
            "dataloader workers would keep at their first epoch: remove `dataloader_persistent_workers`."
        )


# AdamW without weight decay leaves a row with zero gradient exactly where it is (bnb / 8-bit states quantize by block)
EXACT_ROW_OPTIMS = ("adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused", "adamw_apex_fused")
CUSTOM_OPTIMIZERS = ("use_galore", "use_apollo", "use_badam", "use_adam_mini", "use_muon")


def dense_embedding_reason(
    data_args: "DataArguments",
    finetuning_args: "ActionFinetuningArguments",
    training_args: "Seq2SeqTrainingArguments",
) -> str | None:
    r"""Why the arguments need the whole token-embedding table trained (``action_embedding_rows``), or None.

    Training only the used rows is the same model when every other row provably never moves: an Adam-family
    optimizer of torch's, ``weight_decay`` 0, the whole training set known in advance, and one process or DDP.
    """
    if finetuning_args.action_embedding_rows == "all":
        return "action_embedding_rows: all"
    if training_args.weight_decay:
        return f"weight_decay {training_args.weight_decay} moves every row"
    custom = [name for name in CUSTOM_OPTIMIZERS if getattr(finetuning_args, name, False)]
    if custom or finetuning_args.loraplus_lr_ratio is not None:
        return f"{(custom or ['loraplus_lr_ratio'])[0]} builds its own optimizer"
    optim = getattr(training_args.optim, "value", training_args.optim)
    if optim not in EXACT_ROW_OPTIMS:
        return f"optim {optim} (exact only for {', '.join(EXACT_ROW_OPTIMS)})"
    if data_args.streaming:
        return "streaming: the training set's tokens are not known in advance"
    if training_args.deepspeed or parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        return "DeepSpeed (one process and DDP only)"
    if parse_flag_from_env("ACCELERATE_USE_FSDP") or training_args.fsdp_plugin_args is not None:
        return "FSDP (one process and DDP only)"
    return None


def check_fsdp_device(training_args: "Seq2SeqTrainingArguments") -> None:
    r"""Refuse FSDP on a CPU, where accelerate would silently train plain DDP instead.

    accelerate (1.11) turns a run into FSDP only on GPUs and other accelerators; on a CPU the FSDP config of
    ``accelerate launch`` (or HF's ``fsdp`` argument) is ignored and every rank holds the whole model.
    """
    if (
        parse_flag_from_env("ACCELERATE_USE_FSDP") or training_args.fsdp_plugin_args is not None
    ) and training_args.device.type == "cpu":
        raise ValueError(
            "FSDP needs GPUs (or another accelerator): on a CPU, accelerate ignores the FSDP config and would train "
            "plain DDP with the whole model on every rank. Drop the FSDP settings (the accelerate config's FSDP "
            "section, or `fsdp` / `fsdp_config` in the YAML) and train DDP with `FORCE_TORCHRUN=1 NPROC_PER_NODE=N "
            "llamafactory-cli train`, or run on GPUs."
        )
