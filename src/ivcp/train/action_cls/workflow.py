"""``stage: action_cls``: train / evaluate / predict a video action classifier (mirrors LLaMA-Factory's rm stage)."""

from typing import TYPE_CHECKING

import numpy as np
from llamafactory.extras.ploting import plot_loss
from llamafactory.model.loader import load_config
from llamafactory.train.trainer_utils import create_modelcard_and_push

from ...data import ActionDataCollator, get_action_dataset
from ...data.label_names import resolve_label_names
from ...hparams.checks import check_action_cls_args
from ...log import get_logger
from ...model import load_action_model, load_action_tokenizer
from ...model.backbone import check_family
from ...model.loader import find_head
from ...model.loss import BALANCED, ActionLossConfig, format_class_weights, resolve_class_weights
from ...model.multi_label import MULTI_LABEL, SINGLE_LABEL, balanced_pos_weight
from .checkpoints import complete_resume_checkpoint
from .embedding_rows import train_used_embedding_rows
from .frame_cache import FrameCacheReport, open_frame_cache
from .metric import ComputeActionMetrics
from .trainer import ActionClsTrainer


if TYPE_CHECKING:
    from llamafactory.data.data_utils import DatasetModule
    from llamafactory.data.template import Template
    from llamafactory.hparams import DataArguments, ModelArguments
    from llamafactory.model.loader import TokenizerModule
    from transformers import Seq2SeqTrainingArguments, TrainerCallback

    from ...hparams import ActionFinetuningArguments


logger = get_logger(__name__)

LABEL_NAMES = ["action_labels"]
PLOTTED_METRICS = {SINGLE_LABEL: ["eval_accuracy", "eval_macro_f1"], MULTI_LABEL: ["eval_mAP", "eval_micro_f1"]}


def prepare_action_data(
    model_args: "ModelArguments",
    data_args: "DataArguments",
    training_args: "Seq2SeqTrainingArguments",
    finetuning_args: "ActionFinetuningArguments",
) -> tuple["TokenizerModule", "Template", list[str] | None, "DatasetModule"]:
    r"""Tokenizer with ``<ACTION>``, template, class names, and the checked dataset (every example validated)."""
    check_action_cls_args(model_args, data_args, finetuning_args, training_args)
    check_family(load_config(model_args))
    tokenizer_module, template = load_action_tokenizer(model_args, data_args)
    label_names = resolve_label_names(data_args, finetuning_args, find_head(model_args, finetuning_args))
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
    if finetuning_args.action_problem_type == MULTI_LABEL and spec == BALANCED and train_labels is not None:
        spec = balanced_pos_weight(np.asarray(train_labels)).tolist()  # positive-class weights: negatives / positives

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


def keep_clips_together(training_args: "Seq2SeqTrainingArguments", test_clips: int) -> None:
    r"""An evaluation batch of whole videos' clips (decoded in one pass each): a multiple of ``test_clips`` rows.

    A batch smaller than ``test_clips`` is left as it is (the clips of a video then span batches).
    """
    batch_size = training_args.per_device_eval_batch_size
    if test_clips > 1 and batch_size > test_clips and batch_size % test_clips:
        training_args.per_device_eval_batch_size = batch_size // test_clips * test_clips
        logger.info_rank0(
            f"per_device_eval_batch_size {batch_size} -> {training_args.per_device_eval_batch_size}: whole videos of "
            f"{test_clips} clips per batch."
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
    saved_loss = ActionLossConfig.from_head_config(find_head(model_args, finetuning_args)[1])
    loss_config = action_loss_config(finetuning_args, training_args, label_names, dataset_module, saved_loss)
    model = load_action_model(
        tokenizer_module["tokenizer"],
        model_args,
        finetuning_args,
        training_args.do_train,
        label_names,
        data_args,
        loss_config,
    )
    frame_cache = open_frame_cache(finetuning_args, model_args)
    template.mm_plugin.frame_cache = frame_cache  # the plugin is the stage's own copy (with_video_reader)
    data_collator = ActionDataCollator(
        template=template,
        model=model.backbone,
        pad_to_multiple_of=8 if training_args.do_train else None,
        **tokenizer_module,
    )
    keep_clips_together(training_args, finetuning_args.action_test_clips)
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

    train_used_embedding_rows(
        model,
        dataset_module.get("train_dataset"),
        tokenizer_module["tokenizer"],
        data_args,
        finetuning_args,
        training_args,
    )
    if frame_cache is not None:
        trainer.add_callback(FrameCacheReport(frame_cache, training_args))

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
