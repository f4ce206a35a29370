"""Run by test_fsdp.py under torchrun (2 CPU processes, gloo): FSDP2 on the action model, one step, a full save.

HF Trainer's FSDP route needs an accelerator, so the pieces IVCP relies on are exercised with raw FSDP2 here: the
wrap policy from ``_no_split_modules``, the <ACTION> lr group on sharded parameters, ``save_pretrained`` from
the gathered FULL_STATE_DICT, and ``load_head`` (resume) into a sharded head.
"""

import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForImageTextToText

from ivcp.model.action_decoder import ActionDecoder
from ivcp.model.action_model import ActionClassificationModel


ACTION_ID, LR, LR_SCALE = 1000, 1e-2, 0.1


def build_model(model_dir: str) -> ActionClassificationModel:
    torch.manual_seed(0)
    backbone = AutoModelForImageTextToText.from_pretrained(model_dir)
    embedding = backbone.get_input_embeddings().weight[:ACTION_ID].detach().mean(dim=0)
    return ActionClassificationModel(backbone, ActionDecoder(hidden_size=64, num_classes=4), ACTION_ID, embedding)


def train_step(model: ActionClassificationModel) -> None:
    r"""One AdamW step on a fixed batch, the <ACTION> embedding in its own group (as the trainer sets it up)."""
    others = [p for name, p in model.named_parameters() if p.requires_grad and name != "action_embedding"]
    optimizer = torch.optim.AdamW(
        [{"params": others, "lr": LR}, {"params": [model.action_embedding], "lr": LR * LR_SCALE, "weight_decay": 0.0}]
    )
    batch = {
        "input_ids": torch.tensor([[11, 12, 13, 14, ACTION_ID], [21, 22, 23, ACTION_ID, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]),
        "action_labels": torch.tensor([1, 3]),
    }
    model(**batch).loss.backward()
    optimizer.step()


def shard(model: ActionClassificationModel) -> None:
    r"""What accelerate's TRANSFORMER_BASED_WRAP does with FSDP2: every ``_no_split_modules`` block, then the root."""
    for module in model.modules():
        if type(module).__name__ in model._no_split_modules:
            fully_shard(module)
    fully_shard(model)


def main(model_dir: str, output_dir: str, reload_path: str) -> None:
    dist.init_process_group("gloo")
    model = build_model(model_dir)
    model.backbone.get_output_embeddings().weight.requires_grad_(False)
    shard(model)
    train_step(model)  # both ranks see the same batch: the averaged gradient equals the single-process one
    state_dict = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        model.save_pretrained(output_dir, state_dict=state_dict)
    dist.barrier()

    # resume: the saved head and <ACTION> row loaded into a fresh model whose head is sharded (DTensor parameters)
    fresh = build_model(model_dir)
    shard(fresh)
    fresh.load_head(output_dir)
    reloaded = get_model_state_dict(fresh, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        torch.save({key: value for key, value in reloaded.items() if not key.startswith("backbone.")}, reload_path)

    dist.barrier()
    dist.destroy_process_group()


def exit_without_finalizing() -> None:
    r"""End the process without interpreter finalization, which races gloo's worker threads.

    After FSDP2 the gloo process group outlives ``destroy_process_group`` (DTensor's cached specs still reference its
    mesh), so its ``pt_gloo_runloop`` threads still run at exit. One that frees a finished collective's tensor once
    finalization has begun needs the GIL; Python ends that thread with ``pthread_exit``, whose forced unwind through a
    ``noexcept`` destructor aborts the rank with "terminate called without an active exception" (backtrace:
    ``ProcessGroupGloo::runLoop`` -> ``TensorImpl::decref_pyobject`` -> ``PyEval_AcquireThread`` -> ``pthread_exit``;
    about 1 run in 20 on a busy machine). Everything is written and the group destroyed by now: flush and leave.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
    exit_without_finalizing()
