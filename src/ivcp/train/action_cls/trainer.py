"""HF Trainer for the backbone + head wrapper: saving, resuming and the ``<ACTION>`` learning-rate group."""

import json
import math
import os
from dataclasses import replace
from types import MethodType
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from llamafactory.train.callbacks import SaveProcessorCallback
from llamafactory.train.trainer_utils import create_custom_optimizer, create_custom_scheduler
from peft import PeftModel
from transformers import EvalPrediction, Trainer, TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_pt_utils import remove_dummy_checkpoint
from transformers.trainer_utils import EvalLoopOutput, denumpify_detensorize
from transformers.utils import SAFE_WEIGHTS_NAME, WEIGHTS_NAME
from typing_extensions import override

from ...data.clips import CLIP_FIELD, RANDOM_SEGMENT, clip_groups
from ...log import get_logger
from ...model.action_decoder import HEAD_WEIGHTS_NAME
from ...model.decoding import combine_clips, decode, finite_rows, probabilities
from ...model.multi_label import MULTI_LABEL
from .checkpoints import load_full_checkpoint
from .metric import TOP_K, save_average_precision, save_confusion_matrix


if TYPE_CHECKING:
    from datasets import Dataset
    from torch.utils.data import DataLoader
    from transformers import ProcessorMixin
    from transformers.trainer_utils import PredictionOutput

    from ...hparams import ActionFinetuningArguments
    from ...model import ActionClassificationModel


logger = get_logger(__name__)

ACTION_GROUP_NAME = "action_token"


def check_fsdp_plugin(fsdp_plugin: Any) -> None:
    r"""Refuse, before wrapping, the FSDP settings action_cls cannot train or save with."""
    if getattr(fsdp_plugin, "fsdp_version", 1) != 2:
        raise ValueError(
            "action_cls trains under FSDP with `fsdp_version: 2` only: FSDP1 flattens each wrap unit into one tensor "
            "and the root unit holds the fp32 <ACTION> embedding beside the backbone's bf16 weights (`Must flatten "
            "tensors with uniform dtype`). Set `fsdp_version: 2` in the accelerate config (see "
            "examples/accelerate/fsdp_config.yaml)."
        )

    if "FULL_STATE_DICT" not in str(fsdp_plugin.state_dict_type):  # HF calls `_save` (the head) only for it
        raise ValueError(
            "action_cls saves action_decoder.safetensors from the gathered full state dict, but this FSDP run "
            f"uses {fsdp_plugin.state_dict_type}: set `fsdp_state_dict_type: FULL_STATE_DICT` in the accelerate "
            "config (see examples/accelerate/fsdp_config.yaml)."
        )


class DrawEpochCallback(TrainerCallback):
    r"""Give the training collator the epoch that starts, from which it draws the epoch's frames (random_segment).

    It runs before the epoch's dataloader iterator (and its workers) is made; a resumed run restarts the epoch's
    draw where the checkpoint was taken (``state.epoch`` 2.5 -> epoch 2).
    """

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = math.floor(state.epoch or 0)


def _clip_numbers(dataset: Any) -> list[int] | None:
    r"""The rows' clip numbers of a multi-clip evaluation dataset (``action_test_clips`` > 1), else None."""
    if dataset is None or CLIP_FIELD not in (getattr(dataset, "column_names", None) or ()):
        return None
    return list(dataset[CLIP_FIELD])


class ActionClsTrainer(Trainer):
    model: "ActionClassificationModel"

    def __init__(
        self, finetuning_args: "ActionFinetuningArguments", processor: Optional["ProcessorMixin"], **kwargs
    ) -> None:
        kwargs["processing_class"] = kwargs.pop("tokenizer")
        super().__init__(**kwargs)
        self.model_accepts_loss_kwargs = False
        self.finetuning_args = finetuning_args
        self.can_return_loss = True  # report eval_loss
        if processor is not None:
            self.add_callback(SaveProcessorCallback(processor))

        if finetuning_args.use_badam:
            from badam import BAdamCallback, clip_grad_norm_old_version  # type: ignore

            self.accelerator.clip_grad_norm_ = MethodType(clip_grad_norm_old_version, self.accelerator)
            self.add_callback(BAdamCallback)

        self._check_deepspeed_optimizer()
        if self.is_fsdp_enabled:
            check_fsdp_plugin(self.accelerator.state.fsdp_plugin)
        if finetuning_args.action_token_own_clip and (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            logger.warning_rank0(
                "action_token_own_clip applies to one process and DDP only: DeepSpeed and FSDP clip sharded gradients "
                "inside their engines, with the <ACTION> row in the global norm."
            )
        self._router_losses: list[torch.Tensor] = []  # MoE router aux losses since the last log
        self._train_collator = None  # random_segment: training draws its frames, evaluation stays uniform
        if finetuning_args.action_train_sampling == RANDOM_SEGMENT:
            self._train_collator = replace(
                self.data_collator, train_sampling=RANDOM_SEGMENT, sampling_seed=self.args.seed
            )
            self.add_callback(DrawEpochCallback(self._train_collator))

    def _check_deepspeed_optimizer(self) -> None:
        r"""A DeepSpeed config with its own optimizer never calls create_optimizer: the lr groups would vanish."""
        if not self.is_deepspeed_enabled or self.finetuning_args.action_token_lr_scale in (0.0, 1.0):
            return  # 1.0: no group of its own; 0.0: frozen, in no group at all

        ds_config = self.accelerator.state.deepspeed_plugin.deepspeed_config
        if "optimizer" in ds_config:
            raise ValueError(
                "The DeepSpeed config has its own `optimizer` section, which bypasses the parameter groups, so "
                f"`action_token_lr_scale: {self.finetuning_args.action_token_lr_scale}` would be silently ignored. "
                "Remove the `optimizer` section (LLaMA-Factory's example configs have none) or set "
                "`action_token_lr_scale: 1.0`."
            )

    @override
    def create_optimizer(self, *args, **kwargs) -> "torch.optim.Optimizer":
        if self.optimizer is None:
            self.optimizer = create_custom_optimizer(self.model, self.args, self.finetuning_args)

        optimizer = super().create_optimizer(*args, **kwargs)
        self._give_action_token_its_lr(optimizer)
        return optimizer

    def _give_action_token_its_lr(self, optimizer: "torch.optim.Optimizer") -> None:
        r"""Move the ``<ACTION>`` embedding into its own group with ``lr * action_token_lr_scale`` (once)."""
        param = self.model.action_embedding
        scale = self.finetuning_args.action_token_lr_scale
        if scale == 1.0 or any(group.get("name") == ACTION_GROUP_NAME for group in optimizer.param_groups):
            return  # DeepSpeed calls create_optimizer more than once: never scale twice

        for group in optimizer.param_groups:
            if any(p is param for p in group["params"]):
                group["params"] = [p for p in group["params"] if p is not param]
                optimizer.add_param_group(
                    {
                        **group,
                        "params": [param],
                        "lr": group["lr"] * scale,
                        "weight_decay": 0.0,
                        "name": ACTION_GROUP_NAME,
                    }
                )
                logger.info_rank0(f"The <ACTION> embedding trains with learning rate x {scale}.")
                return

    @override
    def _clip_grad_norm(self, model: "torch.nn.Module") -> torch.Tensor:
        r"""With ``action_token_own_clip``: clip the ``<ACTION>`` row on its own, the other parameters together.

        Returns the norm of all gradients before clipping, as HF Trainer logs it. DeepSpeed and FSDP clip inside
        their engines (sharded gradients): there the row stays in the global norm.
        """
        row = self.model.action_embedding
        if (
            not self.finetuning_args.action_token_own_clip
            or row.grad is None
            or self.is_deepspeed_enabled
            or self.is_fsdp_enabled
        ):
            return super()._clip_grad_norm(model)

        others = [p for p in model.parameters() if p is not row]
        others_norm = self.accelerator.clip_grad_norm_(others, self.args.max_grad_norm)  # unscales fp16 grads first
        row_norm = torch.nn.utils.clip_grad_norm_([row], self.args.max_grad_norm)
        return torch.sqrt(torch.as_tensor(others_norm).float() ** 2 + row_norm.float() ** 2)

    @override
    def create_scheduler(
        self, num_training_steps: int, optimizer: Optional["torch.optim.Optimizer"] = None
    ) -> "torch.optim.lr_scheduler.LRScheduler":
        create_custom_scheduler(self.args, num_training_steps, optimizer)
        return super().create_scheduler(num_training_steps, optimizer)

    @override
    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        r"""Keep the MoE router aux loss (already in the loss) of each training step, to log it."""
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, **kwargs)
        if model.training and outputs.get("aux_loss") is not None:
            self._router_losses.append(outputs["aux_loss"].detach().float())

        return (loss, outputs) if return_outputs else loss

    @override
    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self._router_losses and "loss" in logs:
            logs["aux_loss"] = round(torch.stack(self._router_losses).mean().item(), 6)
            self._router_losses.clear()

        super().log(logs, *args, **kwargs)

    @override
    def _get_train_sampler(self, *args, **kwargs) -> Optional["torch.utils.data.Sampler"]:
        if self.finetuning_args.disable_shuffling:
            return torch.utils.data.SequentialSampler(self.train_dataset)

        return super()._get_train_sampler(*args, **kwargs)

    @override
    def get_train_dataloader(self) -> "DataLoader":
        if self._train_collator is None:
            return super().get_train_dataloader()

        collator, self.data_collator = self.data_collator, self._train_collator
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = collator

    @override
    def evaluation_loop(
        self,
        dataloader: "DataLoader",
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        r"""With ``action_test_clips`` > 1: the clips' logits combined per video, then the metrics, one row a video.

        ``eval_loss`` stays the mean over the clips (each clip with its video's label).
        """
        clip_numbers = _clip_numbers(getattr(dataloader, "dataset", None))
        if clip_numbers is None:
            return super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )

        compute_metrics, self.compute_metrics = self.compute_metrics, None
        try:
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
        finally:
            self.compute_metrics = compute_metrics

        groups = clip_groups(clip_numbers)
        if output.predictions is None:
            return output._replace(num_samples=len(groups))

        if len(output.predictions) != len(clip_numbers):
            raise RuntimeError(
                f"the evaluation gathered {len(output.predictions)} rows of logits for {len(clip_numbers)} clips."
            )
        starts = np.cumsum([0, *groups[:-1]])
        model = self.accelerator.unwrap_model(self.model)
        logits = torch.as_tensor(output.predictions)
        combined = torch.stack(
            [
                combine_clips(
                    logits[start : start + size], model.problem_type, self.finetuning_args.action_clip_combine
                )
                for start, size in zip(starts.tolist(), groups)
            ]
        ).numpy()
        labels = output.label_ids[starts] if output.label_ids is not None else None
        metrics = dict(output.metrics)
        if compute_metrics is not None and labels is not None:
            video_metrics = denumpify_detensorize(
                compute_metrics(EvalPrediction(predictions=combined, label_ids=labels))
            )
            prefix = f"{metric_key_prefix}_"
            metrics.update(
                {key if key.startswith(prefix) else prefix + key: value for key, value in video_metrics.items()}
            )
        return EvalLoopOutput(predictions=combined, label_ids=labels, metrics=metrics, num_samples=len(groups))

    @override
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        r"""Under DeepSpeed: the fp32 head and row always, the adapter without the frozen base, no empty model file.

        Collective, like HF's: every rank gathers, the main process writes.
        """
        if not self.is_deepspeed_enabled:
            return super().save_model(output_dir, _internal_call)

        from .deepspeed_save import backbone_state, fp32_head_state, weights_left_to_deepspeed

        output_dir = output_dir if output_dir is not None else self.args.output_dir
        model = self.accelerator.unwrap_model(self.model)
        backbone = backbone_state(self.model_wrapped, model)
        head = fp32_head_state(self.model_wrapped, model)
        if self.args.should_save:
            self._save(output_dir, state_dict={**backbone, **head})

        if weights_left_to_deepspeed(self.model_wrapped, model):  # as HF does (recover with zero_to_fp32.py)
            logger.warning_rank0(
                "stage3_gather_16bit_weights_on_model_save is false: the model's weights are saved in DeepSpeed's "
                f"checkpoint in {output_dir} (recover them with zero_to_fp32.py); the action head is saved as usual."
            )
            remove_dummy_checkpoint(self.args.should_save, output_dir, [WEIGHTS_NAME, SAFE_WEIGHTS_NAME])
            self.model_wrapped.save_checkpoint(output_dir)

    @override
    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self.is_deepspeed_enabled:
            return super()._save_optimizer_and_scheduler(output_dir)

        from .deepspeed_save import frozen_base_excluded

        with frozen_base_excluded(self.model_wrapped, self.accelerator.unwrap_model(self.model)):
            super()._save_optimizer_and_scheduler(output_dir)

    @override
    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        logger.info_rank0(f"Saving model checkpoint to {output_dir}")
        self.accelerator.unwrap_model(self.model, keep_torch_compile=False).save_pretrained(
            output_dir, state_dict=state_dict
        )
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    @override
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        # HF passes the wrapped model under FSDP: its checkpoint file holds the whole wrapper, head included
        target = model if model is not None else self.model.backbone
        try:
            plain = model is None and not self.is_deepspeed_enabled and not isinstance(target, PeftModel)
            if not (plain and load_full_checkpoint(target, resume_from_checkpoint)):
                super()._load_from_checkpoint(resume_from_checkpoint, model=target)
            if not os.path.isfile(os.path.join(resume_from_checkpoint, HEAD_WEIGHTS_NAME)):
                raise ValueError(f"it has no {HEAD_WEIGHTS_NAME}, so an action_cls run did not write it")

            unwrapped = self.accelerator.unwrap_model(self.model)
            unwrapped.load_head(resume_from_checkpoint)
            if unwrapped.embedding_rows is not None:  # the checkpoint's table holds the trained rows
                unwrapped.embedding_rows.read_from_table()
        except (RuntimeError, ValueError) as err:  # torch's size mismatch, our head checks
            reason = str(err).splitlines()[0].rstrip(".:")
            raise ValueError(
                f"Cannot resume from {resume_from_checkpoint} ({reason}). LLaMA-Factory resumes from the last "
                "checkpoint in `output_dir`: if it belongs to another run (other model, LoRA or head settings), use "
                "a new `output_dir`, or set `overwrite_output_dir: true` to train from scratch there."
            ) from err

    @override
    def _load_best_model(self) -> None:
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:  # their checkpoints restore the whole wrapper
            return super()._load_best_model()

        logger.info_rank0(f"Loading best model from {self.state.best_model_checkpoint}.")
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def save_predictions(self, predict_results: "PredictionOutput", dataset: "Dataset") -> None:
        r"""Write ``predictions.jsonl`` (one line per example) and the confusion matrix (JSON + PNG).

        Each line is the example's ``index``, ``videos``, ``label`` (``label_name(s)`` with class names) and its
        decoded result (:mod:`ivcp.model.decoding`). A multi-label head gets each class's average precision (JSON +
        bar chart) instead of the confusion matrix; rows with non-finite logits are left out of both.
        """
        if not self.is_world_process_zero():
            return

        model = self.accelerator.unwrap_model(self.model)
        logits, labels = torch.as_tensor(predict_results.predictions), predict_results.label_ids
        results = decode(logits, model.problem_type, model.threshold, model.label_names, TOP_K)
        finite = finite_rows(logits).numpy()
        if model.problem_type == MULTI_LABEL:
            scores = probabilities(logits[finite], MULTI_LABEL).numpy()
            save_average_precision(self.args.output_dir, labels[finite], scores, model.label_names)
        else:
            predictions = np.array([result["predicted"] for result in results if "error" not in result])
            num_classes = model.action_decoder.num_classes
            save_confusion_matrix(self.args.output_dir, labels[finite], predictions, num_classes, model.label_names)

        clip_numbers = _clip_numbers(dataset)
        if clip_numbers is not None:  # one line per video: its first clip's row names it
            dataset = dataset.select([i for i, number in enumerate(clip_numbers) if number == 0])
        path = os.path.join(self.args.output_dir, "predictions.jsonl")
        logger.info_rank0(f"Saving prediction results to {path}")
        with open(path, "w", encoding="utf-8") as f:
            for index, (example, label, result) in enumerate(zip(dataset, labels.tolist(), results)):
                record = {"index": index, "videos": example.get("videos"), **_truth(label, model.label_names)}
                f.write(json.dumps({**record, **_rounded(result)}, ensure_ascii=False) + "\n")


def _truth(label: int | list[int], label_names: list[str] | None) -> dict:
    r"""The true class (single-label) or classes (multi-label, from the multi-hot target), with names when known."""
    if isinstance(label, list):
        label = [c for c, present in enumerate(label) if present]
        return {"label": label, **({"label_names": [label_names[c] for c in label]} if label_names else {})}

    return {"label": label, **({"label_name": label_names[label]} if label_names else {})}


def _rounded(result: dict) -> dict:
    if "classes" not in result:
        return result

    return {
        **result,
        "classes": [{**entry, "probability": round(entry["probability"], 6)} for entry in result["classes"]],
    }
