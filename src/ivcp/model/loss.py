"""The ``action_cls`` objective: one entry point for every problem type, like transformers' classification loss.

The model's forward calls one :class:`ActionLoss`, built once by the loader from the problem type and an
:class:`ActionLossConfig`: single-label heads train with cross-entropy or focal loss (label smoothing, per-class
weights), multi-label heads with binary cross-entropy against multi-hot targets (the class weights are BCE's
``pos_weight``). The config (with the class weights in use, as numbers) is saved in the head config, so evaluation,
inference and export restore the objective. Class weights are parsed by :func:`parse_class_weights` /
:func:`resolve_class_weights`, which return a float tensor of one weight per class.

The loss is computed in fp32 with autocast off, whatever the training precision, and with torch's own
cross-entropy and BCE bound when this module is imported: LLaMA-Factory's ``enable_liger_kernel`` replaces
``torch.nn.functional.cross_entropy`` globally with Liger's kernel, which writes gradients into its input in place.
"""

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.functional import binary_cross_entropy_with_logits as _torch_binary_cross_entropy
from torch.nn.functional import cross_entropy as _torch_cross_entropy

from .multi_label import MULTI_LABEL, SINGLE_LABEL


ACTION_LOSSES = ("cross_entropy", "focal")
BALANCED = "balanced"
CLASS_WEIGHTS_FORMS = (
    "`balanced`, a list of per-class weights (by class id), a {class name: weight} mapping, or a .json file "
    "holding a list or such a mapping"
)


@dataclass
class ActionLossConfig:
    r"""What the loss computes; saved as these keys in ``action_decoder_config.json``."""

    loss: str = "cross_entropy"
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    class_weights: list[float] | None = None

    def __post_init__(self) -> None:
        if self.loss not in ACTION_LOSSES:
            raise ValueError(f"`action_loss` must be one of {ACTION_LOSSES}, got {self.loss!r}.")

        if not self.focal_gamma >= 0:
            raise ValueError(f"`action_focal_gamma` must be >= 0, got {self.focal_gamma}.")

        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing_factor` must be in [0, 1), got {self.label_smoothing}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_head_config(cls, config: dict[str, Any] | None) -> "ActionLossConfig":
        r"""The saved objective; heads saved before these keys existed trained with plain cross-entropy."""
        return cls(**{f.name: config[f.name] for f in fields(cls) if config and config.get(f.name) is not None})


def focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    gamma: float,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""Multi-class focal loss ``-sum_c q_c w_c (1 - p_c)^gamma log p_c`` (Lin et al., 2017).

    ``q`` is the (smoothed) target distribution and ``w`` the class weights. The batch mean divides by the targets'
    weights, as ``F.cross_entropy`` does, so ``gamma = 0`` is exactly cross-entropy with the same weights and
    smoothing, and focal loss works with both.
    """
    log_probs = logits.float().log_softmax(dim=-1)
    num_classes = logits.size(-1)
    target = F.one_hot(labels, num_classes).float() * (1.0 - label_smoothing) + label_smoothing / num_classes
    if weight is None:
        weight = torch.ones(num_classes, device=logits.device)

    modulating = (1.0 - log_probs.exp()).clamp(min=0.0).pow(gamma)
    per_example = -(target * weight * modulating * log_probs).sum(dim=-1)
    return per_example.sum() / weight[labels].sum()


class ActionLoss:
    r"""The loss callable of the wrapper model, ``loss_fn(logits, labels)``, dispatching on the problem type.

    ``labels`` are class ids ``[batch]`` (single-label) or multi-hot targets ``[batch, classes]`` (multi-label).
    """

    def __init__(self, config: ActionLossConfig | None = None, problem_type: str = SINGLE_LABEL) -> None:
        self.config = config or ActionLossConfig()
        self.problem_type = problem_type
        weights = self.config.class_weights
        self.weight = torch.tensor(weights, dtype=torch.float32) if weights is not None else None

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):  # fp32 under every training precision
            logits, labels = logits.float(), labels.to(logits.device)
            weight = self.weight.to(logits.device) if self.weight is not None else None
            if self.problem_type == MULTI_LABEL:  # every class its own yes/no; the weights are positive weights
                return _torch_binary_cross_entropy(logits, labels.to(logits.dtype), pos_weight=weight)

            if self.config.loss == "focal":
                return focal_loss(logits, labels, self.config.focal_gamma, weight, self.config.label_smoothing)

            return _torch_cross_entropy(logits, labels, weight=weight, label_smoothing=self.config.label_smoothing)


def read_class_weights_spec(spec: Any) -> Any:
    r"""The command-line forms ``"1,2,3"`` / ``"[1, 2, 3]"`` as a list; other values unchanged."""
    if not isinstance(spec, str) or spec == BALANCED or spec.endswith(".json"):
        return spec

    try:
        return [float(value) for value in spec.strip().strip("[]").split(",")]
    except ValueError:
        raise ValueError(f"`action_class_weights` must be {CLASS_WEIGHTS_FORMS}, got {spec!r}.") from None


def parse_class_weights(
    spec: Any, num_classes: int, label_names: Sequence[str] | None = None, base_dir: str = "."
) -> torch.Tensor:
    r"""One float weight per class from a list by class id, a ``{name: weight}`` mapping or a .json file of either."""
    where = "`action_class_weights`"
    spec = read_class_weights_spec(spec)
    if isinstance(spec, str) and spec.endswith(".json"):
        path = spec if os.path.isabs(spec) else os.path.join(base_dir, spec)
        where = f"`action_class_weights` file {path}"
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{where} does not exist: fix the path.")

        with open(path, encoding="utf-8") as f:
            try:
                spec = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where} is not valid JSON ({err}).") from err

    if isinstance(spec, dict):
        spec = _weights_by_name(spec, label_names, where)

    if not isinstance(spec, (list, tuple)):
        raise TypeError(f"{where} must be {CLASS_WEIGHTS_FORMS}, got {spec!r}.")

    if len(spec) != num_classes:
        raise ValueError(
            f"{where} has {len(spec)} weights but num_action_classes={num_classes}: give one weight per class."
        )

    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0 for w in spec):
        raise ValueError(f"{where} must hold finite numbers >= 0, got {list(spec)}.")

    if not any(spec):
        raise ValueError(f"{where} are all zero: at least one class needs a positive weight.")

    return torch.tensor([float(w) for w in spec], dtype=torch.float32)


def _weights_by_name(mapping: dict[str, Any], label_names: Sequence[str] | None, where: str) -> list[Any]:
    if not label_names:
        raise ValueError(
            f"{where} gives weights by class name, but this run has no class names: set `action_label_names` (or a "
            "`label_names` entry in dataset_info.json), or give a list of weights by class id."
        )

    unknown = [name for name in mapping if name not in label_names]
    if unknown:
        raise ValueError(f"{where} names classes {unknown} that are not in the label names {list(label_names)}.")

    missing = [name for name in label_names if name not in mapping]
    if missing:
        raise ValueError(f"{where} has no weight for the classes {missing}: give every class a weight.")

    return [mapping[name] for name in label_names]


def balanced_class_weights(
    labels: Sequence[int], num_classes: int, label_names: Sequence[str] | None = None
) -> torch.Tensor:
    r"""scikit-learn's ``compute_class_weight("balanced")``: ``n_examples / (n_classes * n_examples_of_class)``."""
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=num_classes)
    absent = [label_names[c] if label_names else c for c in range(num_classes) if counts[c] == 0]
    if absent:
        raise ValueError(
            f"`action_class_weights: balanced` cannot weight classes {absent}: the training set has no example of "
            "them. Add examples, or give the weights as a list."
        )

    weights = compute_class_weight("balanced", classes=np.arange(num_classes), y=labels)
    return torch.tensor(weights, dtype=torch.float32)


def resolve_class_weights(
    spec: Any,
    num_classes: int,
    label_names: Sequence[str] | None = None,
    train_labels: Sequence[int] | None = None,
    saved: Sequence[float] | None = None,
    base_dir: str = ".",
) -> torch.Tensor | None:
    r"""The class weights of a run: ``spec`` (``balanced`` counts ``train_labels``), else the ones saved with the head.

    ``balanced`` without a training set (evaluation only) reuses the saved weights.
    """
    if spec is None:
        return torch.tensor(saved, dtype=torch.float32) if saved is not None else None

    if spec == BALANCED:
        if train_labels is not None:
            return balanced_class_weights(train_labels, num_classes, label_names)

        if saved is not None:
            return torch.tensor(saved, dtype=torch.float32)

        raise ValueError(
            "`action_class_weights: balanced` counts the classes of the training set, and this run has none (and no "
            "saved head with weights): train with `do_train: true`, or give the weights as a list."
        )

    return parse_class_weights(spec, num_classes, label_names, base_dir)


def format_class_weights(weights: torch.Tensor, label_names: Sequence[str] | None = None) -> str:
    names = label_names or [str(c) for c in range(len(weights))]
    return ", ".join(f"{name}={weight:.4g}" for name, weight in zip(names, weights.tolist()))
