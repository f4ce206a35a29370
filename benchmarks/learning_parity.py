"""Learning parity: a minimal hand-written PyTorch loop against ``stage: action_cls`` on the same model and clips.

Both train the vision tower + projector + a linear head on the hidden state at ``<ACTION>`` of a tiny random
Qwen2-VL whose LLM stays frozen (lr 3e-3, cosine, warmup 0.1, batch 8, gradient clipping 1.0), on generated 4-class
motion-direction clips (8 frames, 64x64; :mod:`ivcp.demo.motion_videos`), and are scored on held-out clips.

The reference loop shares nothing with the stage but the files: it decodes the mp4 files with PyAV, runs the
Qwen2-VL video processor, writes the token sequence itself, loads the model with transformers and trains it with
``torch.optim.AdamW``. ``compare`` puts both side by side on one batch: what the model sees (pixel values, grid,
tokens, positions), the ``<ACTION>`` embedding, the trainable set, the optimizer groups, the schedule, the head, the
train/eval mode, and the first step's loss and gradients. ``accuracy`` trains both for each seed (the stage through
``llamafactory-cli train``, as a user runs it) and prints the held-out accuracies.

``accuracy`` over many seeds is the multi-seed mode: each result is printed as it comes and appended to
``<work_dir>/runs/results.jsonl``, then a table gives each seed, how many reach ``--pass_accuracy`` (0.9), the mean
and the minimum; ``table`` prints it again from results.jsonl (for seeds split over several processes).
``--generator diagonal`` uses the independent clips of :mod:`ivcp.demo.diagonal_videos`. ``trace`` trains the
stage's own trainer in-process and the reference, writing per-step evidence (learning_trace.py): gradient norm per
group, the clipping factor, how far each group moved, the spread of the pooled states. See docs/learning.md.

    python benchmarks/learning_parity.py compare
    python benchmarks/learning_parity.py accuracy --seeds 1 2 3 4 5 6 7 8 9 10 --work_dir runs/motion
    python benchmarks/learning_parity.py accuracy --seeds 42 --stage_set action_token_own_clip=false --tag _old
    python benchmarks/learning_parity.py trace --seeds 4 --work_dir runs/motion
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import av
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn


DEFAULT_SYSTEM = "You are a helpful assistant."  # the qwen2_vl template's default system prompt
ACTION_TOKEN = "<ACTION>"


# ----------------------------------------------------------------------------------------------------------- assets
def build_assets(work_dir: str, args: argparse.Namespace) -> tuple[str, str]:
    r"""The tiny random Qwen2-VL and the motion clips (train and held-out test), written once per ``work_dir``."""
    from ivcp.demo.diagonal_videos import make_diagonal_dataset
    from ivcp.demo.motion_videos import make_motion_dataset
    from ivcp.demo.tiny_model import build_tiny_qwen2vl

    make_dataset = make_motion_dataset if args.generator == "motion" else make_diagonal_dataset

    model_dir, data_dir = os.path.join(work_dir, "model"), os.path.join(work_dir, "data")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        build_tiny_qwen2vl(model_dir, seed=0)
    if not os.path.isfile(os.path.join(data_dir, "dataset_info.json")):
        make_dataset(data_dir, args.train_per_class, args.test_per_class, seed=args.data_seed, name=args.generator)
    return model_dir, data_dir


def stage_config(model_dir: str, data_dir: str, output_dir: str, seed: int, args: argparse.Namespace) -> dict:
    r"""The ``action_cls`` YAML of the same recipe: LLM frozen, vision tower + projector + head trained."""
    from ivcp.demo.motion_videos import motion_stage_config

    config = motion_stage_config(
        model_dir,
        data_dir,
        output_dir,
        do_eval=True,
        finetuning_type="full",
        freeze_vision_tower=False,
        freeze_multi_modal_projector=False,
        freeze_language_model=True,
        dataset=f"{args.generator}_train",
        eval_dataset=f"{args.generator}_test",
        overwrite_output_dir=True,
        save_strategy="no",
        logging_steps=10,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=16,
        learning_rate=args.lr,
        num_train_epochs=args.epochs,
        lr_scheduler_type="cosine",
        warmup_ratio=args.warmup_ratio,
        max_grad_norm=1.0,
        seed=seed,
        disable_gradient_checkpointing=True,
        dataloader_num_workers=0,
    )
    for item in args.stage_set:
        key, value = item.split("=", 1)
        config[key] = yaml.safe_load(value)
    return config


# ------------------------------------------------------------------------------------------------ reference loop
def read_frames(path: str) -> np.ndarray:
    r"""Every frame of the clip, RGB uint8, shape (frames, height, width, 3)."""
    with av.open(path) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


class ReferenceData:
    r"""The clips as tensors: Qwen2-VL's video processor on all decoded frames, and a hand-written token sequence."""

    def __init__(self, data_dir: str, name: str, processor: Any, system: str) -> None:
        with open(os.path.join(data_dir, f"{name}.json"), encoding="utf-8") as f:
            examples = json.load(f)

        tokenizer = processor.tokenizer
        self.videos = [os.path.join(data_dir, example["videos"][0]) for example in examples]
        self.labels = torch.tensor([example["action_label"] for example in examples])
        processed = [
            processor.video_processor(videos=[read_frames(path)], return_tensors="pt") for path in self.videos
        ]
        self.pixel_values = [item["pixel_values_videos"] for item in processed]
        self.grid_thw = torch.cat([item["video_grid_thw"] for item in processed])
        merge = processor.video_processor.merge_size**2
        self.input_ids = []
        for grid, example in zip(self.grid_thw, examples):
            question = example["conversations"][0]["value"].replace("<video>", "")
            video = "<|vision_start|>" + "<|video_pad|>" * (int(grid.prod()) // merge) + "<|vision_end|>"
            text = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
            text += f"<|im_start|>user\n{video}{question}"
            self.input_ids.append(tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0])

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        if len({len(self.input_ids[i]) for i in indices}) != 1:
            raise ValueError("The reference batches equal-length sequences only (one clip size, one prompt).")
        return {
            "input_ids": torch.stack([self.input_ids[i] for i in indices]),
            "pixel_values_videos": torch.cat([self.pixel_values[i] for i in indices]),
            "video_grid_thw": self.grid_thw[indices],
            "labels": self.labels[indices],
        }


class ReferenceClassifier(nn.Module):
    r"""Qwen2-VL's inner model, the last hidden state at ``<ACTION>``, a linear head; the LLM frozen."""

    def __init__(
        self, model_dir: str, action_token_id: int, num_classes: int, action_init: str, train_action: bool = False
    ) -> None:
        super().__init__()
        from transformers import Qwen2VLForConditionalGeneration

        self.model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).model
        self.action_token_id = action_token_id
        self.model.language_model.requires_grad_(False)
        embedding = self.model.language_model.embed_tokens.weight
        if action_init in ("mean", "rescaled"):  # the mean of the real tokens' rows, as the stage starts it
            with torch.no_grad():
                mean = embedding[:action_token_id].mean(dim=0)
                if action_init == "rescaled":  # at the mean norm of the rows
                    mean *= embedding[:action_token_id].norm(dim=-1).mean() / mean.norm()
                embedding[action_token_id] = mean
        self.head = nn.Linear(self.model.config.text_config.hidden_size, num_classes)
        self.action_embedding = None
        if train_action:  # like the stage: its own parameter, written over the table's output at <ACTION>
            self.action_embedding = nn.Parameter(embedding[action_token_id].detach().clone())
            self.model.language_model.embed_tokens.register_forward_hook(self._write_action_embedding)

    def _write_action_embedding(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return torch.where((args[0] == self.action_token_id).unsqueeze(-1), self.action_embedding, output)

    def mm_token_type_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return (input_ids == self.model.config.video_token_id).long() * 2

    def forward(self, input_ids: torch.Tensor, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor):
        hidden = self.model(
            input_ids=input_ids,
            pixel_values_videos=pixel_values_videos,
            video_grid_thw=video_grid_thw,
            mm_token_type_ids=self.mm_token_type_ids(input_ids),  # what the processor returns: 2 marks video tokens
            use_cache=False,
        ).last_hidden_state
        positions = (input_ids == self.action_token_id).int().cumsum(-1).argmax(-1)  # the last <ACTION>
        return self.head(hidden[torch.arange(len(hidden)), positions])


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return step / max(1, warmup)
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def reference_optimizer(model: ReferenceClassifier, args: argparse.Namespace, total_steps: int):
    params = [p for n, p in model.named_parameters() if p.requires_grad and n != "action_embedding"]
    groups = [{"params": params}]
    if model.action_embedding is not None:
        groups.append(
            {"params": [model.action_embedding], "lr": args.lr * args.ref_action_lr_scale, "weight_decay": 0.0}
        )
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.ref_weight_decay)
    warmup = math.ceil(args.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_with_warmup(step, total_steps, warmup)
    )
    return optimizer, scheduler


def load_reference(model_dir: str, data_dir: str, args: argparse.Namespace, split: str = "train"):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    processor.tokenizer.add_tokens([ACTION_TOKEN], special_tokens=True)
    action_id = processor.tokenizer.convert_tokens_to_ids(ACTION_TOKEN)
    system = DEFAULT_SYSTEM if args.ref_system == "default" else ""
    data = ReferenceData(data_dir, f"{args.generator}_{split}", processor, system)
    return processor, action_id, data


@torch.no_grad()
def reference_accuracy(model: ReferenceClassifier, data: ReferenceData, batch_size: int = 16) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(data), batch_size):
        batch = data.batch(list(range(start, min(start + batch_size, len(data)))))
        labels = batch.pop("labels")
        correct += int((model(**batch).argmax(-1) == labels).sum())
    return correct / len(data)


def train_reference(
    model_dir: str, data_dir: str, seed: int, args: argparse.Namespace, run_dir: str, trace_path: str | None = None
) -> dict[str, float]:
    _, action_id, train = load_reference(model_dir, data_dir, args, "train")
    _, _, test = load_reference(model_dir, data_dir, args, "test")
    torch.manual_seed(seed)
    model = ReferenceClassifier(model_dir, action_id, 4, args.ref_action_init, args.ref_action_lr_scale is not None)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    optimizer, scheduler = reference_optimizer(model, args, steps_per_epoch * args.epochs)
    generator = torch.Generator().manual_seed(seed)
    tracer = None
    if trace_path is not None:
        from learning_trace import Tracer

        tracer = Tracer(model.named_parameters(), model.head, trace_path, steps_per_epoch, 1.0)
    losses = []
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(train), generator=generator).tolist()
        for start in range(0, len(train), args.batch_size):
            batch = train.batch(order[start : start + args.batch_size])
            labels = batch.pop("labels")
            loss = F.cross_entropy(model(**batch), labels)
            optimizer.zero_grad()
            loss.backward()
            if tracer is not None:
                tracer.before_clip()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())

    if tracer is not None:
        tracer.close()
    with open(os.path.join(run_dir, f"reference{args.tag}_seed{seed}.jsonl"), "w", encoding="utf-8") as f:
        # the stage's logging_steps: the curves line up with its trainer_log.jsonl
        steps = range(10, len(losses) + 1, 10)
        f.writelines(json.dumps({"step": i, "loss": float(np.mean(losses[i - 10 : i]))}) + "\n" for i in steps)
    return {
        "train_loss_last_epoch": float(np.mean(losses[-steps_per_epoch:])),
        "accuracy": reference_accuracy(model, test),
    }


# ---------------------------------------------------------------------------------------------------------- stage
def train_with_cli(config: dict, config_path: str) -> float:
    r"""Write ``config`` to ``config_path``, run ``llamafactory-cli train`` on it; its held-out ``eval_accuracy``."""
    with open(config_path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f)
    cli = os.path.join(os.path.dirname(sys.executable), "llamafactory-cli")
    result = subprocess.run([cli, "train", config_path], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"llamafactory-cli train failed:\n{result.stderr[-6000:]}")
    with open(os.path.join(config["output_dir"], "eval_results.json"), encoding="utf-8") as f:
        return json.load(f)["eval_accuracy"]


def train_stage(model_dir: str, data_dir: str, seed: int, args: argparse.Namespace, run_dir: str) -> dict[str, float]:
    r"""``llamafactory-cli train`` on the YAML, as a user runs it; the held-out accuracy from eval_results.json."""
    name = f"stage{args.tag}_seed{seed}"
    config = stage_config(model_dir, data_dir, os.path.join(run_dir, name), seed, args)
    output_dir = config["output_dir"]
    accuracy = train_with_cli(config, os.path.join(run_dir, f"{name}.yaml"))
    with open(os.path.join(output_dir, "trainer_log.jsonl"), encoding="utf-8") as f:
        losses = [record["loss"] for record in map(json.loads, f) if "loss" in record]
    result = {"train_loss_last_logged": losses[-1], "accuracy": accuracy}
    if config.get("finetuning_type") == "full" and config.get("action_decoder_type", "linear") == "linear":
        # the reference forward has a full model and a linear head: a LoRA adapter or an mlp head it cannot load
        result["accuracy_by_reference_code"] = reference_accuracy_of(output_dir, model_dir, data_dir, args)
    return result


def reference_accuracy_of(output_dir: str, model_dir: str, data_dir: str, args: argparse.Namespace) -> float:
    r"""The stage's saved model and head, scored by the reference's own data path and forward (rules out eval bugs)."""
    from safetensors.torch import load_file

    _, action_id, test = load_reference(model_dir, data_dir, args, "test")
    model = ReferenceClassifier(output_dir, action_id, 4, "row")
    tensors = load_file(os.path.join(output_dir, "action_decoder.safetensors"))
    with torch.no_grad():
        model.model.language_model.embed_tokens.weight[action_id] = tensors.pop("action_embedding")
    model.head.load_state_dict({key.removeprefix("net."): value for key, value in tensors.items()})
    return reference_accuracy(model, test)


def load_stage(config: dict):
    r"""The stage's own pieces, in-process: model, collator, data set and a trainer with its optimizer/scheduler."""
    from llamafactory.hparams import get_train_args

    import ivcp
    from ivcp.data import ActionDataCollator
    from ivcp.model import load_action_model
    from ivcp.train.action_cls.trainer import ActionClsTrainer
    from ivcp.train.action_cls.workflow import LABEL_NAMES, prepare_action_data

    ivcp.register()
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(config)
    tokenizer_module, template, label_names, dataset_module = prepare_action_data(
        model_args, data_args, training_args, finetuning_args
    )
    model = load_action_model(tokenizer_module["tokenizer"], model_args, finetuning_args, True, label_names)
    collator = ActionDataCollator(template=template, model=model.backbone, pad_to_multiple_of=8, **tokenizer_module)
    training_args.label_names = LABEL_NAMES
    trainer = ActionClsTrainer(
        model=model,
        args=training_args,
        finetuning_args=finetuning_args,
        data_collator=collator,
        **dataset_module,
        **tokenizer_module,
    )
    return trainer, dataset_module["train_dataset"]


# -------------------------------------------------------------------------------------------------------- compare
def _row(name: str, stage: Any, reference: Any, same: bool | None = None) -> None:
    mark = "" if same is None else ("same" if same else "DIFFERENT")
    print(f"| {name} | {stage} | {reference} | {mark} |")


def _reference_name(stage_name: str) -> str:
    r"""The reference's name of a stage parameter."""
    if stage_name.startswith("action_decoder.net."):
        return "head." + stage_name.removeprefix("action_decoder.net.")
    return stage_name.removeprefix("backbone.")


def _grad_norm(param: torch.Tensor | None) -> str:
    return "-" if param is None or param.grad is None else f"{param.grad.norm():.4f}"


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.shape == b.shape else float("inf")


def compare(model_dir: str, data_dir: str, args: argparse.Namespace, run_dir: str) -> None:
    r"""Both setups on one batch of the same 8 training clips, component by component."""
    seed = args.seeds[0]
    trainer, train_dataset = load_stage(stage_config(model_dir, data_dir, os.path.join(run_dir, "cmp"), seed, args))
    stage_model = trainer.model
    processor, action_id, reference_data = load_reference(model_dir, data_dir, args)
    torch.manual_seed(seed)
    reference = ReferenceClassifier(
        model_dir, action_id, 4, args.ref_action_init, args.ref_action_lr_scale is not None
    )
    indices = list(range(args.batch_size))
    features = [
        {
            k: train_dataset[i][k]
            for k in ("input_ids", "attention_mask", "action_labels", "videos", "images", "audios")
        }
        for i in indices
    ]
    stage_batch = trainer.data_collator(features)
    ref_batch = reference_data.batch(indices)

    print("| what | stage | reference | |")
    print("| --- | --- | --- | --- |")
    tokenizer = processor.tokenizer
    stage_ids = stage_batch["input_ids"][0][stage_batch["attention_mask"][0].bool()]
    _row("token layout (row 0)", repr(tokenizer.decode(stage_ids)), repr(tokenizer.decode(ref_batch["input_ids"][0])))
    _row(
        "tokens (ids, row 0)",
        len(stage_ids),
        len(ref_batch["input_ids"][0]),
        torch.equal(stage_ids, ref_batch["input_ids"][0]),
    )
    _row("padding after <ACTION>", int((~stage_batch["attention_mask"].bool()).sum()), 0)
    _row(
        "labels",
        stage_batch["action_labels"].tolist(),
        ref_batch["labels"].tolist(),
        torch.equal(stage_batch["action_labels"], ref_batch["labels"]),
    )
    _row(
        "video_grid_thw",
        stage_batch["video_grid_thw"].tolist()[0],
        ref_batch["video_grid_thw"].tolist()[0],
        torch.equal(stage_batch["video_grid_thw"], ref_batch["video_grid_thw"]),
    )
    pixel_diff = _max_diff(stage_batch["pixel_values_videos"], ref_batch["pixel_values_videos"])
    _row(
        "pixel_values_videos",
        tuple(stage_batch["pixel_values_videos"].shape),
        f"max abs diff {pixel_diff:.3g}",
        pixel_diff < 1e-4,
    )

    # positions: the stage's collator computes them; the reference lets the model compute them
    inner = reference.model
    ref_positions, _ = inner.get_rope_index(
        ref_batch["input_ids"],
        reference.mm_token_type_ids(ref_batch["input_ids"]),
        video_grid_thw=ref_batch["video_grid_thw"],
    )
    # LLaMA-Factory prepends a text-position row (transformers issue 39400); the padding after <ACTION> is cut off
    stage_positions = stage_batch["position_ids"][1:, :, : ref_positions.shape[-1]]
    _row(
        "mrope position_ids (t, h, w rows up to <ACTION>)",
        tuple(stage_batch["position_ids"].shape),
        tuple(ref_positions.shape),
        torch.equal(stage_positions, ref_positions),
    )

    # <ACTION> embedding
    stage_action = stage_model.action_embedding.detach()
    ref_action = inner.language_model.embed_tokens.weight[action_id].detach()
    _row(
        "<ACTION> embedding init (norm)",
        f"{stage_action.norm():.4f}",
        f"{ref_action.norm():.4f}",
        _max_diff(stage_action, ref_action) < 1e-6,
    )

    # trainable set
    stage_trainable = {
        n.removeprefix("backbone.model."): p.numel() for n, p in stage_model.named_parameters() if p.requires_grad
    }
    ref_trainable = {n.removeprefix("model."): p.numel() for n, p in reference.named_parameters() if p.requires_grad}
    only_stage = sorted(set(stage_trainable) - set(ref_trainable))
    only_ref = sorted(set(ref_trainable) - set(stage_trainable))
    _row(
        "trainable tensors / numbers",
        f"{len(stage_trainable)} / {sum(stage_trainable.values())}",
        f"{len(ref_trainable)} / {sum(ref_trainable.values())}",
    )
    _row("trainable only in one", only_stage, only_ref)

    # optimizer groups and schedule
    steps_per_epoch = math.ceil(len(train_dataset) / args.batch_size)
    total = steps_per_epoch * args.epochs
    trainer.create_optimizer_and_scheduler(num_training_steps=total)
    names = {id(p): n for n, p in stage_model.named_parameters()}
    stage_groups = [
        (g.get("name", ""), len(g["params"]), g["initial_lr"], g["weight_decay"], g.get("betas"), g.get("eps"))
        for g in trainer.optimizer.param_groups
    ]
    ref_optimizer, ref_scheduler = reference_optimizer(reference, args, total)
    ref_groups = [
        (len(g["params"]), g["initial_lr"], g["weight_decay"], g.get("betas"), g.get("eps"))
        for g in ref_optimizer.param_groups
    ]
    _row("optimizer", type(trainer.optimizer).__name__ + f" {trainer.args.optim}", type(ref_optimizer).__name__)
    _row("groups (name, tensors, lr, wd, betas, eps)", stage_groups, ref_groups)
    for group in trainer.optimizer.param_groups:
        if group.get("name") == "action_token":
            _row("<ACTION> group", [names[id(p)] for p in group["params"]], "-")
    lrs_stage, lrs_ref = [], []
    for step in range(total):
        lrs_stage.append(trainer.lr_scheduler.get_last_lr()[0])
        lrs_ref.append(ref_scheduler.get_last_lr()[0])
        trainer.lr_scheduler.step()
        ref_scheduler.step()
    marks = [0, 1, math.ceil(args.warmup_ratio * total), total // 2, total - 1]
    _row(
        "lr at steps " + str(marks),
        [f"{lrs_stage[i]:.3g}" for i in marks],
        [f"{lrs_ref[i]:.3g}" for i in marks],
        np.allclose(lrs_stage, lrs_ref, rtol=1e-6),
    )

    # head init
    stage_head = stage_model.action_decoder.net
    _row(
        "head init (weight std, bias std)",
        f"{stage_head.weight.std():.4f}, {stage_head.bias.std():.4f}",
        f"{reference.head.weight.std():.4f}, {reference.head.bias.std():.4f}",
    )

    # modes and dropout
    stage_model.train()
    reference.train()
    dropouts = lambda m: sorted(
        {f"{type(x).__name__}:{x.p}" for x in m.modules() if isinstance(x, nn.Dropout) and x.p > 0}
    )
    _row("dropout > 0 (modules)", dropouts(stage_model), dropouts(reference))
    _row(
        "attention implementation",
        stage_model.config._attn_implementation,
        reference.model.config._attn_implementation,
    )
    _row("gradient checkpointing", stage_model.is_gradient_checkpointing, reference.model.is_gradient_checkpointing)

    # first-step loss and gradients on the same batch, from the same weights
    with torch.no_grad():
        reference.head.weight.copy_(stage_head.weight)
        reference.head.bias.copy_(stage_head.bias)
        inner.language_model.embed_tokens.weight[action_id] = stage_model.action_embedding
        if reference.action_embedding is not None:
            reference.action_embedding.copy_(stage_model.action_embedding)
    stage_out = stage_model(**stage_batch)
    stage_out.loss.backward()
    labels = ref_batch.pop("labels")
    ref_loss = F.cross_entropy(reference(**ref_batch), labels)
    ref_loss.backward()
    _row(
        "first-step loss",
        f"{stage_out.loss.item():.6f}",
        f"{ref_loss.item():.6f}",
        abs(stage_out.loss.item() - ref_loss.item()) < 1e-4,
    )
    ref_params = dict(reference.named_parameters())
    worst, worst_name = 0.0, ""
    for name, param in stage_model.named_parameters():
        if not param.requires_grad or param.grad is None:
            continue
        key = _reference_name(name)
        if key not in ref_params or ref_params[key].grad is None:
            continue
        rel = _max_diff(param.grad, ref_params[key].grad) / (float(param.grad.abs().max()) + 1e-12)
        if rel > worst:
            worst, worst_name = rel, name
    _row("first-step gradients, worst relative diff", f"{worst:.3g} ({worst_name})", "", worst < 1e-3)
    stage_norm = torch.nn.utils.get_total_norm([p.grad for p in stage_model.parameters() if p.grad is not None])
    ref_norm = torch.nn.utils.get_total_norm([p.grad for p in reference.parameters() if p.grad is not None])
    _row("gradient norm before clipping", f"{stage_norm:.4f}", f"{ref_norm:.4f}")
    _row(
        "<ACTION> embedding gradient norm",
        _grad_norm(stage_model.action_embedding),
        _grad_norm(reference.action_embedding),
    )
    typical = inner.language_model.embed_tokens.weight[:action_id].norm(dim=-1).mean()
    _row(
        "<ACTION> embedding norm / mean token row norm",
        f"{stage_model.action_embedding.norm():.4f} / {typical:.4f}",
        "",
    )
    # one optimizer step each, at the peak learning rate, after clipping to 1.0 as both loops do
    for optimizer in (trainer.optimizer, ref_optimizer):
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
    torch.nn.utils.clip_grad_norm_([p for p in stage_model.parameters() if p.requires_grad], 1.0)
    torch.nn.utils.clip_grad_norm_([p for p in reference.parameters() if p.requires_grad], 1.0)
    # Adam's first step is lr * g / (|g| + eps): where a clipped gradient is near eps (1e-8), float noise in g moves it
    clear = {name: param.grad.abs() > 1e-6 for name, param in stage_model.named_parameters() if param.grad is not None}
    trainer.optimizer.step()
    ref_optimizer.step()
    worst, worst_clear = (0.0, ""), (0.0, "")
    for name, param in stage_model.named_parameters():
        key = _reference_name(name)
        if param.requires_grad and key in ref_params:
            diff = (param - ref_params[key]).abs().detach()
            worst = max(worst, (float(diff.max()), name))
            worst_clear = max(worst_clear, (float(torch.where(clear[name], diff, 0.0).max()), name))
    _row("weights after one clipped AdamW step, worst abs diff", f"{worst[0]:.3g} ({worst[1]})", "", worst[0] < 1e-5)
    _row(
        "the same where the clipped gradient is > 1e-6",
        f"{worst_clear[0]:.3g} ({worst_clear[1]})",
        "",
        worst_clear[0] < 1e-5,
    )


# ------------------------------------------------------------------------------------------------------- accuracy
def accuracy(model_dir: str, data_dir: str, args: argparse.Namespace, run_dir: str) -> None:
    r"""Each method on each seed: every result printed as it comes and appended to results.jsonl, then the table."""
    rows = []
    for seed in args.seeds:
        for method in args.methods:
            start = time.perf_counter()
            if method == "reference":
                result = train_reference(model_dir, data_dir, seed, args, run_dir)
            else:
                result = train_stage(model_dir, data_dir, seed, args, run_dir)
            result.update(method=method, seed=seed, seconds=round(time.perf_counter() - start, 1))
            result.update(tag=args.tag, stage_set=args.stage_set, generator=args.generator)
            print(json.dumps(result), flush=True)
            with open(os.path.join(run_dir, "results.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps(result) + "\n")
            rows.append(result)

    print_table(rows, args)


def table(model_dir: str, data_dir: str, args: argparse.Namespace, run_dir: str) -> None:
    r"""The table of ``--work_dir``'s results.jsonl: ``accuracy`` runs split over several processes, put together."""
    with open(os.path.join(run_dir, "results.jsonl"), encoding="utf-8") as f:
        rows = [row for row in map(json.loads, f) if row["seed"] in args.seeds and row.get("tag", "") == args.tag]
    print_table(rows, args)


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    r"""Held-out accuracy per seed and method, how many seeds reach ``--pass_accuracy``, the mean and the minimum."""
    seeds = [seed for seed in args.seeds if any(row["seed"] == seed for row in rows)]
    print(f"\n{args.generator}: held-out accuracy per seed ({' '.join(args.stage_set) or 'stage defaults'})")
    print("| method | " + " | ".join(f"seed {seed}" for seed in seeds) + f" | >= {args.pass_accuracy} | mean | min |")
    print("| --- |" + " ---: |" * (len(seeds) + 3))
    for method in args.methods:
        by_seed = {row["seed"]: row["accuracy"] for row in rows if row["method"] == method}
        if not by_seed:
            continue
        accs = list(by_seed.values())
        passed = sum(a >= args.pass_accuracy for a in accs)
        cells = " | ".join(f"{by_seed[seed]:.3f}" if seed in by_seed else "-" for seed in seeds)
        print(f"| {method} | {cells} | {passed}/{len(accs)} | {np.mean(accs):.3f} | {min(accs):.3f} |")


# ---------------------------------------------------------------------------------------------------------- trace
def trace(model_dir: str, data_dir: str, args: argparse.Namespace, run_dir: str) -> None:
    r"""Per-step evidence (learning_trace.py) of the stage's own trainer (in-process) and of the reference, per seed."""
    from learning_trace import trace_trainer

    for seed in args.seeds:
        for method in args.methods:
            path = os.path.join(run_dir, f"trace_{method}{args.tag}_seed{seed}.jsonl")
            start = time.perf_counter()
            if method == "reference":
                result = train_reference(model_dir, data_dir, seed, args, run_dir, trace_path=path)
            else:
                output_dir = os.path.join(run_dir, f"trace_stage{args.tag}_seed{seed}")
                trainer, train_dataset = load_stage(stage_config(model_dir, data_dir, output_dir, seed, args))
                tracer = trace_trainer(trainer, path, every=math.ceil(len(train_dataset) / args.batch_size))
                train_output = trainer.train()
                tracer.close()
                trainer.save_model(output_dir)
                result = {
                    "train_loss_mean": train_output.training_loss,
                    "accuracy": reference_accuracy_of(output_dir, model_dir, data_dir, args),
                }
            result.update(method=method, seed=seed, seconds=round(time.perf_counter() - start, 1), trace=path)
            print(json.dumps(result), flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("compare", "accuracy", "trace", "table"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=("reference", "stage"), default=["reference", "stage"])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument(
        "--generator",
        choices=("motion", "diagonal"),
        default="motion",
        help="the clips: ivcp.demo.motion_videos, or the independent ivcp.demo.diagonal_videos",
    )
    parser.add_argument("--pass_accuracy", type=float, default=0.9, help="the table counts seeds at or above this")
    parser.add_argument("--train_per_class", type=int, default=36)
    parser.add_argument("--test_per_class", type=int, default=12)
    parser.add_argument("--data_seed", type=int, default=7)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup_ratio", type=float, default=0.1)
    parser.add_argument(
        "--ref_system", choices=("default", "none"), default="default", help="reference prompt's system turn"
    )
    parser.add_argument(
        "--ref_action_init",
        choices=("mean", "rescaled", "row"),
        default="mean",
        help="<ACTION> embedding: mean of rows, or its random row",
    )
    parser.add_argument(
        "--ref_action_lr_scale",
        type=float,
        help="train the reference's <ACTION> embedding with lr * this, as the stage does (default: frozen with the LLM)",
    )
    parser.add_argument("--ref_weight_decay", type=float, default=0.0)
    parser.add_argument(
        "--stage_set", action="append", default=[], help="extra LLaMA-Factory argument KEY=VALUE for the stage"
    )
    parser.add_argument(
        "--tag", default="", help="suffix of the stage's run folders (several variants in one work_dir)"
    )
    parser.add_argument("--threads", type=int)
    parser.add_argument("--work_dir", help="keep model, data and runs here (default: a temporary folder)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="learning_parity_")
    os.makedirs(work_dir, exist_ok=True)
    model_dir, data_dir = build_assets(work_dir, args)
    run_dir = os.path.join(work_dir, "runs")
    os.makedirs(run_dir, exist_ok=True)
    commands = {"compare": compare, "accuracy": accuracy, "trace": trace, "table": table}
    commands[args.command](model_dir, data_dir, args, run_dir)


if __name__ == "__main__":
    main()
