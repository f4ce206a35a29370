"""``stage: action_cls``: train / evaluate / predict a video action classifier (mirrors LLaMA-Factory's rm stage)."""

from typing import TYPE_CHECKING

import numpy as np
from llamafactory.data.parser import get_dataset_list
from llamafactory.extras import logging
from llamafactory.extras.ploting import plot_loss
from llamafactory.model.loader import load_config
from llamafactory.train.trainer_utils import create_modelcard_and_push

from ...data import ActionDataCollator, get_action_dataset
from ...data.label_names import check_label_names, read_label_names
from ...model import load_action_model, load_action_tokenizer
from ...model.backbone import check_family
from ...model.head_config import load_head_config
from ...model.loader import find_head_directory
from ...model.loss import BALANCED, ActionLoss, ActionLossConfig, format_class_weights, resolve_class_weights
from ...model.multi_label import MULTI_LABEL, SINGLE_LABEL, balanced_pos_weight
from .checkpoints import complete_resume_checkpoint
from .metric import ComputeActionMetrics
from .trainer import ActionClsTrainer


if TYPE_CHECKING:
    from llamafactory.data.data_utils import DatasetModule
    from llamafactory.data.template import Template
    from llamafactory.hparams import DataArguments, ModelArguments
    from llamafactory.model.loader import TokenizerModule
    from transformers import Seq2SeqTrainingArguments, TrainerCallback

    from ...hparams import ActionFinetuningArguments


logger = logging.get_logger(f"llamafactory.{__name__}")  # under LLaMA-Factory's logger: its handlers show INFO

LABEL_NAMES = ["action_labels"]
PLOTTED_METRICS = {SINGLE_LABEL: ["eval_accuracy", "eval_macro_f1"], MULTI_LABEL: ["eval_mAP", "eval_micro_f1"]}


def check_action_cls_args(
    model_args: "ModelArguments", data_args: "DataArguments", finetuning_args: "ActionFinetuningArguments"
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


def find_label_names(
    model_args: "ModelArguments", data_args: "DataArguments", finetuning_args: "ActionFinetuningArguments"
) -> tuple[list[str] | None, str | None]:
    r"""Class names and where they come from: ``action_label_names``, the datasets' ``label_names``, the head."""
    names, origin = None, None
    if finetuning_args.action_label_names is not None:
        names, origin = read_label_names(finetuning_args.action_label_names), finetuning_args.action_label_names
    else:
        dataset_names = (data_args.dataset or []) + (data_args.eval_dataset or [])
        for attr in get_dataset_list(dataset_names, data_args.dataset_dir) if dataset_names else []:
            if getattr(attr, "action_label_names", None) is not None:
                names = read_label_names(attr.action_label_names, base_dir=data_args.dataset_dir)
                origin = f"`label_names` of {attr} in {data_args.dataset_dir}/dataset_info.json"
                break

    if names is None:
        head_directory = find_head_directory(
            finetuning_args.action_decoder_path, model_args.adapter_name_or_path, model_args.model_name_or_path
        )
        head_config = load_head_config(head_directory) if head_directory else None
        names, origin = (head_config or {}).get("label_names"), f"the head config in {head_directory}"

    return names, origin


def resolve_label_names(
    model_args: "ModelArguments", data_args: "DataArguments", finetuning_args: "ActionFinetuningArguments"
) -> list[str] | None:
    r"""The class names, checked against ``num_action_classes``."""
    names, origin = find_label_names(model_args, data_args, finetuning_args)
    check_label_names(names, finetuning_args.num_action_classes, origin)
    return names


def prepare_action_data(
    model_args: "ModelArguments",
    data_args: "DataArguments",
    training_args: "Seq2SeqTrainingArguments",
    finetuning_args: "ActionFinetuningArguments",
) -> tuple["TokenizerModule", "Template", list[str] | None, "DatasetModule"]:
    r"""Tokenizer with ``<ACTION>``, template, class names, and the checked dataset (every example validated)."""
    check_action_cls_args(model_args, data_args, finetuning_args)
    check_family(load_config(model_args))
    tokenizer_module, template = load_action_tokenizer(model_args, data_args)
    label_names = resolve_label_names(model_args, data_args, finetuning_args)
    dataset_module = get_action_dataset(
        template, model_args, data_args, training_args, finetuning_args, **tokenizer_module, label_names=label_names
    )
    return tokenizer_module, template, label_names, dataset_module


def action_loss_config(
    finetuning_args: "ActionFinetuningArguments",
    training_args: "Seq2SeqTrainingArguments",
    label_names: list[str] | None,
    dataset_module: "DatasetModule",
    saved: ActionLossConfig,
) -> ActionLossConfig:
    r"""The run's objective; without ``action_class_weights``, the weights saved with a loaded head are kept."""
    train_dataset = dataset_module.get("train_dataset") if training_args.do_train else None
    train_labels = train_dataset["action_labels"] if train_dataset is not None else None
    spec = finetuning_args.action_class_weights
    if finetuning_args.action_problem_type == MULTI_LABEL:
        if finetuning_args.action_loss != "cross_entropy" or training_args.label_smoothing_factor:
            raise ValueError(
                "`action_problem_type: multi_label` trains with binary cross-entropy: `action_loss: focal` and "
                "`label_smoothing_factor` apply to single-label runs only; remove them."
            )

        if spec == BALANCED and train_labels is not None:  # positive-class weights: negatives / positives
            spec = balanced_pos_weight(np.asarray(train_labels)).tolist()

    weights = resolve_class_weights(
        spec, finetuning_args.num_action_classes, label_names, train_labels=train_labels, saved=saved.class_weights
    )
    if weights is not None:
        spec = finetuning_args.action_class_weights
        origin = spec if isinstance(spec, str) else ("saved with the head" if spec is None else "given")
        logger.info_rank0(f"Class weights ({origin}): {format_class_weights(weights, label_names)}.")

    return ActionLossConfig(
        loss=finetuning_args.action_loss,
        focal_gamma=finetuning_args.action_focal_gamma,
        label_smoothing=training_args.label_smoothing_factor,
        class_weights=weights.tolist() if weights is not None else None,
    )


def run_action_cls(
    model_args: "ModelArguments",
    data_args: "DataArguments",
    training_args: "Seq2SeqTrainingArguments",
    finetuning_args: "ActionFinetuningArguments",
    callbacks: list["TrainerCallback"] | None = None,
) -> None:
    if training_args.do_train:  # LLaMA-Factory resumes from the highest checkpoint-N, even a half-written one
        training_args.resume_from_checkpoint = complete_resume_checkpoint(training_args.resume_from_checkpoint)

    tokenizer_module, template, label_names, dataset_module = prepare_action_data(
        model_args, data_args, training_args, finetuning_args
    )
    model = load_action_model(
        tokenizer_module["tokenizer"], model_args, finetuning_args, training_args.do_train, label_names, data_args
    )
    model.loss_fn = ActionLoss(
        action_loss_config(finetuning_args, training_args, label_names, dataset_module, model.loss_fn.config)
    )
    data_collator = ActionDataCollator(
        template=template,
        model=model.backbone,
        pad_to_multiple_of=8 if training_args.do_train else None,
        **tokenizer_module,
    )
    training_args.label_names = LABEL_NAMES  # LLaMA-Factory forces ["labels"] for LoRA
    if training_args.ddp_find_unused_parameters is None:  # what HF Trainer decides for a bare PreTrainedModel
        training_args.ddp_find_unused_parameters = not model.is_gradient_checkpointing
    trainer = ActionClsTrainer(
        model=model,
        args=training_args,
        finetuning_args=finetuning_args,
        data_collator=data_collator,
        callbacks=callbacks,
        compute_metrics=ComputeActionMetrics(
            finetuning_args.num_action_classes,
            label_names,
            finetuning_args.action_problem_type,
            finetuning_args.action_threshold,
        ),
        **dataset_module,
        **tokenizer_module,
    )

    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
        if trainer.is_world_process_zero() and finetuning_args.plot_loss:
            plot_loss(training_args.output_dir, keys=["loss", "eval_loss", *PLOTTED_METRICS[model.problem_type]])

    if training_args.do_eval:
        metrics = trainer.evaluate(metric_key_prefix="eval")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    if training_args.do_predict:
        predict_results = trainer.predict(dataset_module["eval_dataset"], metric_key_prefix="predict")
        trainer.log_metrics("predict", predict_results.metrics)
        trainer.save_metrics("predict", predict_results.metrics)
        trainer.save_predictions(predict_results, dataset_module["eval_dataset"])

    create_modelcard_and_push(trainer, model_args, data_args, training_args, finetuning_args)
