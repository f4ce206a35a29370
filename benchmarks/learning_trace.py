"""Per-step training evidence for ``learning_parity.py trace``: what each parameter group gets and how far it moves.

Every optimizer step writes one JSON line: the gradient norm of each group before clipping (vision tower, merger,
``<ACTION>`` row, head), the global norm and the clipping factor it sets (max_grad_norm / norm, at most 1), and the
spread of the pooled ``<ACTION>`` states of the batch (their mean norm and the mean per-feature standard deviation
across the batch). Once an epoch it adds how far the vision tower, merger and head moved from their start (relative
L2 distance). The stage's trainer and the reference loop are traced by the same code.
"""

import json
from collections.abc import Iterable

import torch
from torch import nn


GROUPS = ("vision", "merger", "action_row", "head", "other")


def group_of(name: str) -> str:
    r"""The group of a parameter by its name, in the stage's (``backbone.model...``) or the reference's naming."""
    if name.endswith("action_embedding") or "embed_tokens" in name:
        return "action_row"
    if "visual.merger" in name:
        return "merger"
    if "visual." in name:
        return "vision"
    if name.startswith(("action_decoder.", "head.")):
        return "head"
    return "other"


class Tracer:
    r"""Collects the evidence of one run into ``path`` (JSON lines)."""

    def __init__(
        self, named_params: Iterable[tuple[str, nn.Parameter]], head: nn.Module, path: str, every: int, clip: float
    ) -> None:
        self.params = [(name, param) for name, param in named_params if param.requires_grad]
        self.start = {name: param.detach().clone() for name, param in self.params}
        self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self.every, self.clip, self.step = every, clip, 0
        self.pooled: torch.Tensor | None = None
        head.register_forward_pre_hook(self._keep_pooled)

    def _keep_pooled(self, module: nn.Module, args: tuple) -> None:
        if module.training:
            self.pooled = args[0].detach().float()

    def before_clip(self) -> None:
        r"""Call after backward, before clipping: one line of evidence for this step."""
        squares = dict.fromkeys(GROUPS, 0.0)
        for name, param in self.params:
            if param.grad is not None:
                squares[group_of(name)] += float(param.grad.detach().float().pow(2).sum())
        total = sum(squares.values()) ** 0.5
        record = {
            "step": self.step,
            "total": round(total, 5),
            "factor": round(min(1.0, self.clip / (total + 1e-6)), 5),
            **{f"g_{group}": round(value**0.5, 5) for group, value in squares.items() if value > 0},
        }
        if self.pooled is not None:
            record["pooled_norm"] = round(float(self.pooled.norm(dim=-1).mean()), 4)
            record["pooled_spread"] = round(float(self.pooled.std(dim=0).mean()), 5)
        if self.step % self.every == 0:
            record.update(self.moved())
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.step += 1

    @torch.no_grad()
    def moved(self) -> dict[str, float]:
        r"""Relative L2 distance of each group from its start."""
        diff, base = dict.fromkeys(GROUPS, 0.0), dict.fromkeys(GROUPS, 0.0)
        for name, param in self.params:
            group = group_of(name)
            diff[group] += float((param.float() - self.start[name].float()).pow(2).sum())
            base[group] += float(self.start[name].float().pow(2).sum())
        return {f"moved_{g}": round((diff[g] / base[g]) ** 0.5, 5) for g in GROUPS if base[g] > 0}

    def close(self) -> None:
        self.file.write(json.dumps({"step": self.step, "final": True, **self.moved()}) + "\n")
        self.file.close()


def trace_trainer(trainer, path: str, every: int) -> Tracer:
    r"""Trace an ``ActionClsTrainer`` by wrapping its clipping seam (``Trainer._clip_grad_norm``)."""
    model = trainer.model
    tracer = Tracer(model.named_parameters(), model.action_decoder, path, every, trainer.args.max_grad_norm)
    clip = trainer._clip_grad_norm

    def traced_clip(model_to_clip):
        tracer.before_clip()
        return clip(model_to_clip)

    trainer._clip_grad_norm = traced_clip
    return tracer
